"""The framework adapters: PyTorch (:mod:`.torch`) and JAX (:mod:`.jax`).

Each keeps only what is its framework's (tensor conversion, vmap, the framework's derivative
call) and hands :mod:`gradprobe.functional.adapted` the rest. Import them as
``gradprobe.torch`` and ``gradprobe.jax``; this package imports neither framework itself.
"""
