"""Tests of the modules at the top of the package: tree.py, options.py, step_sweep.py."""
