from __future__ import annotations

import math

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
