"""A probe's step does not depend on how many BLAS threads the machine gives this process:
the pilot's ``g . d`` is summed as numpy sums (piece by piece), not by a BLAS dot product,
whose split of the sum follows its thread count (a different last bit on 2 threads than on 1
for most 200k-entry vectors), and with it the probe step and every probe's numbers."""

from __future__ import annotations

import numpy as np
import pytest

from gradprobe.checking.context import ParamCheck
from gradprobe.checking.prober import choose_step
from gradprobe.evaluate import SerialEvaluator
from gradprobe.layout import normalize_params
from gradprobe.numerics.directions import Directions
from gradprobe.numerics.steps import default_relative_step
from gradprobe.numerics.tolerances import loss_epsilon, tolerance_for

threadpoolctl = pytest.importorskip("threadpoolctl")


def _loss(w):
    # Curved enough that the pilot's truncation estimate, not the round-off floor, sets the
    # step: the step then follows the last bit of g . d.
    return float(np.sum(np.sin(50.0 * w)))


def test_the_probe_step_is_the_same_on_one_and_two_blas_threads():
    steps = {1: [], 2: []}
    for seed in range(6):
        w = np.random.default_rng(seed).standard_normal(200_000)
        layout, base, _ = normalize_params(w)
        tol = tolerance_for(layout.dtypes[0], loss_epsilon(layout.dtypes))
        for threads in (1, 2):
            ev = SerialEvaluator(_loss, layout, base)
            ctx = ParamCheck(ev, 0, 50.0 * np.cos(50.0 * w), tol, default_relative_step(w.dtype))
            directions = Directions(np.random.default_rng(seed), 1, w.size)
            with threadpoolctl.threadpool_limits(threads, user_api="blas"):
                steps[threads].append(choose_step(ctx, directions))
    assert steps[1] == steps[2]
