"""``gradprobe.jax``: check a JAX function against its VJP.

The public name of :mod:`gradprobe.frameworks.jax` (see there).
"""

from __future__ import annotations

from .frameworks.jax import check

__all__ = ["check"]
