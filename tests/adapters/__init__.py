"""Tests of the PyTorch and JAX adapters (skipped where the framework is not installed)."""
