"""The report picture's layout: legend, footnote and panels never overlap, at any size."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import gradprobe
from gradprobe.examples import make_mlp

plot = pytest.importorskip("gradprobe.report.plot")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def report():
    m = make_mlp((8, 6, 6, 3), batch=4)
    return gradprobe.check(m.loss, m.grad, m.params)


def _boxes(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    (note,) = [t for t in fig.texts if "round-off floor" in t.get_text()]
    axes = [ax.get_tightbbox(renderer) for ax in fig.axes if ax.get_visible()]
    return legend.get_window_extent(renderer), note.get_window_extent(renderer), axes


@pytest.mark.parametrize("n_params", [1, 2, 6])
@pytest.mark.parametrize("n_panels", [1, 2, 3])
def test_legend_footnote_and_panels_do_not_overlap(report, n_params, n_panels):
    import matplotlib.pyplot as plt

    names = list(report.params)[:n_params]
    small = dataclasses.replace(report, params={n: report.params[n] for n in names})
    fig = plot._figure({f"check {i}": small for i in range(n_panels)})
    try:
        legend, note, axes = _boxes(fig)
        width, height = fig.bbox.width, fig.bbox.height
        assert not legend.overlaps(note), (legend, note)
        for box in axes:
            assert not box.overlaps(legend) and not box.overlaps(note), (box, legend, note)
        for box in (legend, note):  # inside the figure, nothing cut off
            assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height
        assert note.y1 <= legend.y0  # the footnote under the legend
    finally:
        plt.close(fig)


def test_the_png_is_written(report, tmp_path):
    path = report.plot(tmp_path / "r.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert np.isfinite(report.params["W1"].max_rel_error)
