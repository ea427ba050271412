from __future__ import annotations

import math

import numpy as np
import pytest

from qa_lib import plotting


def test_loss_plot_has_the_chance_line():
    fig = plotting.plot_loss([3.5, 3.0, 2.0, 1.0] * 5, chance_loss=math.log(32))
    ax = fig.axes[0]
    assert ax.get_xlabel() and ax.get_ylabel()
    labels = [line.get_label() for line in ax.get_lines()]
    assert any("chance" in label and "3.47" in label for label in labels)


def test_bars_heatmap_histogram_and_epochs(tmp_path):
    results = {"untrained": {"recall@1": 0.5}, "trained": {"recall@1": 0.9}}
    fig = plotting.plot_metric_bars(results, keys=("recall@1",), chance=0.01)
    heights = sorted(p.get_height() for p in fig.axes[0].patches)
    assert heights == [0.5, 0.9]
    plotting.save_figure(fig, tmp_path / "bars.png")
    assert (tmp_path / "bars.png").stat().st_size > 1000
    heat = plotting.plot_similarity([[1, 0], [0, 1]], ["q1", "q2"], ["a1", "a2"])
    assert heat.axes[0].get_xlabel() == "answer"
    hist = plotting.plot_length_histogram([5, 6, 7], [20, 30], max_q_len=32, max_a_len=128)
    assert len(hist.axes[0].get_lines()) == 2
    epochs = plotting.plot_epoch_metrics(
        [{"epoch": 1, "recall@1": 0.4}, {"epoch": 2, "recall@1": 0.6}],
        keys=("recall@1",),
        baseline={"recall@1": 0.3},
    )
    assert len(epochs.axes[0].get_lines()) == 2


def test_lines_and_seed_spread():
    fig = plotting.plot_lines(
        [1, 2, 4], {"loss": [3.0, 2.0, 1.0]}, "scale", "loss", reference=2.5, logx=True
    )
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "scale"
    assert [line.get_label() for line in ax.get_lines()] == ["loss", "reference"]
    spread = plotting.plot_seed_spread({"a": [0.2, 0.4], "b": [1.0, 1.0]}, "recall", chance=0.01)
    heights = [p.get_height() for p in spread.axes[0].patches]
    assert heights == [pytest.approx(0.3), pytest.approx(1.0)]


def test_pca_2d_finds_the_main_direction():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(200, 1))
    points = np.hstack([10 * t, t, 0.01 * rng.normal(size=(200, 3))])  # a line in 5-D
    xy, share = plotting.pca_2d(points)
    assert xy.shape == (200, 2)
    assert share[0] > 0.99 and share.sum() <= 1.0 + 1e-9
    assert abs(np.corrcoef(xy[:, 0], t[:, 0])[0, 1]) > 0.999


def test_embedding_pca_has_one_panel_per_model():
    rng = np.random.default_rng(1)
    q, a = rng.normal(size=(30, 8)), rng.normal(size=(30, 8))
    fig = plotting.plot_embedding_pca({"before": (q, a), "after": (q, a + 1)}, links=5)
    assert [ax.get_title() for ax in fig.axes] == ["before", "after"]
    assert len(fig.axes[0].get_lines()) == 5  # the question-answer links
    assert "PC1" in fig.axes[0].get_xlabel()


def test_gathered_negatives_figure_marks_roles_and_the_local_rows():
    from qa_lib.plotting import gathered_roles, plot_gathered_negatives

    roles = gathered_roles(3, 2)
    assert roles.shape == (6, 6) and (np.diag(roles) == 2).all()
    assert roles[0, 1] == 1 and roles[0, 2] == 0 and roles[5, 4] == 1  # own device vs gathered
    assert (roles == 1).sum() == 3 * 2 * 1 and (roles == 0).sum() == 36 - 6 - 6
    fig = plot_gathered_negatives(3, 2, device=1)
    ax = fig.axes[0]
    (box,) = ax.patches
    assert box.get_xy() == (-0.5, 1.5) and box.get_height() == 2 and box.get_width() == 6
    assert "5 negatives per question, not 1" in ax.get_title()
