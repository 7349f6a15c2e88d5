"""Example models with hand-written backprop, and planted bugs for demos, docs and tests.

Every factory returns an :class:`ExampleModel` ready for
``gradprobe.check(model.loss, model.grad, model.params)``.
"""

from .batchnorm import BATCHNORM_BUGS, make_batchnorm_mlp
from .conv import CONV_BUGS, make_conv
from .mlp import MLP_BUGS, ExampleModel, make_mlp
from .rnn import RNN_BUGS, make_rnn

__all__ = [
    "BATCHNORM_BUGS",
    "CONV_BUGS",
    "MLP_BUGS",
    "RNN_BUGS",
    "ExampleModel",
    "make_batchnorm_mlp",
    "make_conv",
    "make_mlp",
    "make_rnn",
]
