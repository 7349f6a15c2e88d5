"""Pure numerics, never calling the loss: steps, tolerances (THE pass rule), numba kernels,
the stratified sampler and coverage statistics."""
