from __future__ import annotations

import math

import numpy as np
import pytest

from qa_lib import plotting


def test_loss_plot_has_the_chance_line_and_a_title():
    fig = plotting.plot_loss([3.5, 3.0, 2.0, 1.0] * 5, chance_loss=math.log(32))
    ax = fig.axes[0]
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    labels = [line.get_label() for line in ax.get_lines()]
    assert any("chance" in label and "3.47" in label for label in labels)
    assert ax.get_yscale() == "linear"  # chance is close to the curve: a plain axis
    assert ax.get_ylim()[1] >= math.log(32)


def test_loss_plot_goes_logarithmic_when_chance_is_far_above_the_curve():
    losses = list(np.linspace(0.7, 0.05, 30))
    chance = math.log(32) + math.log(2)
    fig = plotting.plot_loss(losses, chance, steps_per_epoch=10, chance_label="chance: ln B + ln 2")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and "log" in ax.get_ylabel()
    low, high = ax.get_ylim()
    assert low < min(losses) and high > chance  # both the curve and the chance line fit
    assert high / low < 20 * chance / min(losses)  # fitted, not a default decade range
    assert any("ln B + ln 2" in line.get_label() for line in ax.get_lines())
    epoch_marks = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert len(epoch_marks) == 2  # after steps 10 and 20


def test_epoch_metrics_have_one_panel_per_metric_and_an_epoch_zero_point():
    epochs = [
        {"epoch": 1, "recall@1": 0.96, "question_echo_rate": 0.02},
        {"epoch": 2, "recall@1": 0.97, "question_echo_rate": 0.01},
    ]
    baseline = {"recall@1": 0.95, "question_echo_rate": 1.0}
    fig = plotting.plot_epoch_metrics(
        epochs, keys=("recall@1", "question_echo_rate"), baseline=baseline, best_epoch=2
    )
    assert [ax.get_title() for ax in fig.axes] == ["recall@1", "question_echo_rate"]
    assert fig.get_suptitle()
    recall, echo = fig.axes
    curve = next(line for line in recall.get_lines() if line.get_marker() == "o")
    assert list(curve.get_xdata()) == [0, 1, 2] and curve.get_ydata()[0] == 0.95
    low, high = recall.get_ylim()  # fitted to 0.95-0.97: a step of 0.01 is visible
    assert 0.8 < low < 0.95 and 0.97 < high <= 1.02
    assert echo.get_ylim()[0] < 0.01 and echo.get_ylim()[1] >= 1.0
    assert any("best epoch" in line.get_label() for line in recall.get_lines())


def test_epoch_metrics_without_a_baseline_start_at_epoch_one():
    fig = plotting.plot_epoch_metrics([{"epoch": 1, "mrr@10": 0.5}], keys=("mrr@10",))
    curve = fig.axes[0].get_lines()[0]
    assert list(curve.get_xdata()) == [1]


def test_bars_label_every_value_and_show_zeros(tmp_path):
    results = {
        "untrained": {"recall@1": 0.5, "echo": 0.0},
        "trained": {"recall@1": 0.9, "echo": 0.2},
    }
    fig = plotting.plot_metric_bars(results, keys=("recall@1", "echo"), chance=0.01, title="t")
    ax = fig.axes[0]
    heights = sorted(p.get_height() for p in ax.patches)
    assert heights == [0.0, 0.2, 0.5, 0.9]
    texts = [t.get_text() for t in ax.texts]
    assert "0.000" in texts and "0.900" in texts
    stubs = [c for c in ax.collections if len(c.get_segments())]  # the zero bar's stub
    assert len(stubs) == 1 and ax.get_ylim()[0] < 0
    assert ax.get_title(loc="left") == "t"
    plotting.save_figure(fig, tmp_path / "bars.png")
    assert (tmp_path / "bars.png").stat().st_size > 1000


def test_heatmap_labels_are_readable_and_cells_carry_scores():
    long = "What is the tallest mountain in the whole wide world, and how tall is it?"
    fig = plotting.plot_similarity([[1, 0], [0, 1]], [long, "q2"], ["a1", "a2"], title="m")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "answer" and ax.get_title() == "m"
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0].count("\n") == 1 and labels[0].endswith("…")  # two lines, cut
    assert all(t.get_fontsize() >= 8 for t in ax.get_yticklabels())
    assert sorted(t.get_text() for t in ax.texts) == ["0.00", "0.00", "1.00", "1.00"]


def test_histogram_lines_and_seed_spread_have_titles():
    hist = plotting.plot_length_histogram([5, 6, 7], [20, 30], max_q_len=32, max_a_len=128)
    assert len(hist.axes[0].get_lines()) == 2 and hist.axes[0].get_title()
    fig = plotting.plot_lines(
        [1, 2, 4], {"loss": [3.0, 2.0, 1.0]}, "scale", "loss", reference=2.5, logx=True
    )
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "scale"
    assert [line.get_label() for line in ax.get_lines()] == ["loss", "reference"]
    assert ax.get_title() == "loss against scale"
    spread = plotting.plot_seed_spread({"a": [0.2, 0.4], "b": [0.0, 0.0]}, "recall", chance=0.01)
    ax = spread.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == [pytest.approx(0.3), pytest.approx(0.0)]
    assert "0.000" in [t.get_text() for t in ax.texts] and ax.get_title()


def test_pca_2d_finds_the_main_direction():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(200, 1))
    points = np.hstack([10 * t, t, 0.01 * rng.normal(size=(200, 3))])  # a line in 5-D
    xy, share = plotting.pca_2d(points)
    assert xy.shape == (200, 2)
    assert share[0] > 0.99 and share.sum() <= 1.0 + 1e-9
    assert abs(np.corrcoef(xy[:, 0], t[:, 0])[0, 1]) > 0.999


def test_embedding_pca_shows_the_echoes_and_the_explained_variance():
    rng = np.random.default_rng(1)
    q, a = rng.normal(size=(30, 8)), rng.normal(size=(30, 8))
    fig = plotting.plot_embedding_pca({"before": (q, a, q), "after": (q, a + 1)}, links=5)
    before, after = fig.axes
    assert before.get_title().startswith("before") and "variance" in before.get_title()
    assert len(before.get_lines()) == 10  # question-answer and question-echo links
    assert len(after.get_lines()) == 5  # no echoes given: question-answer links only
    assert [t.get_text() for t in before.get_legend().get_texts()] == [
        "questions",
        "answers",
        "echoes",
    ]
    echoes = before.collections[2].get_offsets()
    assert np.allclose(echoes, before.collections[0].get_offsets())  # an echo equal to its question
    assert "PC1" in before.get_xlabel()


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
