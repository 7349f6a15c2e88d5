"""One check's steps, on top of :mod:`gradprobe.evaluate` and :mod:`gradprobe.numerics`:
pre-flight, per-entry estimates, THE kink rule, probes and bisection, diagnosis, and THE
verdict step that builds each parameter's report once. Internal: the public API is
:func:`gradprobe.check`."""
