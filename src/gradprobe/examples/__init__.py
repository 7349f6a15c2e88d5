"""Example models with hand-written backprop, and planted bugs for demos, docs and tests.

Every factory returns an :class:`ExampleModel` ready for
``gradprobe.check(model.loss, model.grad, model.params)``.
"""

from .mlp import MLP_BUGS, ExampleModel, make_mlp

__all__ = ["MLP_BUGS", "ExampleModel", "make_mlp"]
