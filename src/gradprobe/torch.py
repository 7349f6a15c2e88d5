"""``gradprobe.torch``: check a PyTorch function or module against its autograd backward.

The public name of :mod:`gradprobe.frameworks.torch` (see there).
"""

from __future__ import annotations

from .frameworks.torch import check, check_module

__all__ = ["check", "check_module"]
