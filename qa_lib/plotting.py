"""Small figures for the notebooks (01-06) and the CLI; each function returns a Figure."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import numpy as np


def _figure(figsize=(5, 3)):
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize, layout="constrained")


def plot_loss(step_loss: Sequence[float], chance_loss: float | None = None, smooth: int = 10):
    """Training loss per step, smoothed, with the chance level as a dashed line.

    Chance is ln(candidates per question): ln B for the plain loss over a batch of B, ln(B + 1)
    with the echo negative, ln B + ln 2 with the question flag's detector loss
    (``History.chance_loss`` holds the right value).
    """
    fig, ax = _figure()
    steps = np.arange(1, len(step_loss) + 1)
    ax.plot(steps, step_loss, color="tab:blue", alpha=0.3, lw=1, label="loss per step")
    if len(step_loss) >= smooth > 1:
        kernel = np.ones(smooth) / smooth
        ax.plot(
            steps[smooth - 1 :],
            np.convolve(step_loss, kernel, mode="valid"),
            color="tab:blue",
            lw=2,
            label=f"mean of {smooth} steps",
        )
    if chance_loss is not None:
        ax.axhline(
            chance_loss, color="gray", ls="--", label=f"chance = ln(candidates) = {chance_loss:.2f}"
        )
    ax.set(xlabel="optimiser step", ylabel="in-batch loss", ylim=(0, None))
    ax.legend(fontsize=8)
    return fig


def plot_epoch_metrics(
    epochs: Sequence[Mapping], keys=("recall@1", "mrr@10"), baseline: Mapping | None = None
):
    """Validation metrics per epoch; ``baseline`` (e.g. the untrained model) as dotted lines."""
    fig, ax = _figure()
    x = [e["epoch"] for e in epochs]
    for key, color in zip(keys, ("tab:green", "tab:orange", "tab:red")):
        ax.plot(x, [e.get(key, np.nan) for e in epochs], marker="o", color=color, label=key)
        if baseline and key in baseline:
            ax.axhline(baseline[key], color=color, ls=":", label=f"{key} before training")
    ax.set(xlabel="epoch", ylabel="validation metric", ylim=(0, 1.02), xticks=x)
    ax.legend(fontsize=8)
    return fig


def plot_metric_bars(
    results: Mapping[str, Mapping[str, float]],
    keys=("recall@1", "recall@5", "mrr@10", "ndcg@10", "question_echo_rate", "recall@1_with_echo"),
    chance: float | None = None,
):
    """Grouped bars: one group per metric, one bar per system (e.g. untrained vs trained)."""
    fig, ax = _figure((6, 3))
    width = 0.8 / max(1, len(results))
    for i, (name, metrics) in enumerate(results.items()):
        xs = np.arange(len(keys)) + i * width
        bars = ax.bar(xs, [metrics.get(k, np.nan) for k in keys], width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    if chance is not None:
        ax.axhline(chance, color="gray", ls="--", label=f"chance recall@1 = {chance:.3f}")
    labels = ["\n".join(textwrap.wrap(k.replace("_", " "), 10)) for k in keys]
    ax.set_xticks(np.arange(len(keys)) + width * (len(results) - 1) / 2, labels, fontsize=7)
    ax.set(ylim=(0, 1.1), ylabel="score")
    fig.legend(loc="outside upper center", ncols=3, fontsize=8)
    return fig


def plot_similarity(
    scores,
    questions: Sequence[str] | None = None,
    answers: Sequence[str] | None = None,
    title: str = "q_emb · a_emb",
):
    """Heatmap of a question-answer score matrix; a trained model shows a bright diagonal."""
    scores = np.asarray(scores)
    fig, ax = _figure((4.5, 4))
    image = ax.imshow(scores, cmap="viridis")
    fig.colorbar(image, ax=ax, shrink=0.8)
    short = lambda texts: [t if len(t) < 28 else t[:25] + "…" for t in texts]  # noqa: E731
    if questions is not None:
        ax.set_yticks(range(len(questions)), short(questions), fontsize=6)
    if answers is not None:
        ax.set_xticks(range(len(answers)), short(answers), fontsize=6, rotation=90)
    ax.set(xlabel="answer", ylabel="question", title=title)
    return fig


def plot_length_histogram(
    q_lengths: Sequence[int],
    a_lengths: Sequence[int],
    max_q_len: int | None = None,
    max_a_len: int | None = None,
):
    """Token-length histograms of questions and answers, with the chosen max lengths."""
    fig, ax = _figure()
    bins = np.linspace(0, max(max(q_lengths), max(a_lengths)) + 1, 40)
    ax.hist(q_lengths, bins=bins, alpha=0.6, label="questions")
    ax.hist(a_lengths, bins=bins, alpha=0.6, label="answers")
    for value, color, name in (
        (max_q_len, "tab:blue", "max_q_len"),
        (max_a_len, "tab:orange", "max_a_len"),
    ):
        if value:
            ax.axvline(value, color=color, ls="--", label=f"{name} = {value}")
    ax.set(xlabel="tokens", ylabel="texts")
    ax.legend(fontsize=8)
    return fig


def save_figure(fig, path) -> None:
    """Save a figure as a PNG at modest dpi and close it."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lines(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    reference: float | None = None,
    reference_label: str = "reference",
    logx: bool = False,
):
    """One line per named series over a shared x, with an optional dashed reference line."""
    fig, ax = _figure()
    for name, ys in series.items():
        ax.plot(x, ys, marker="o", ms=3, label=name)
    if reference is not None:
        ax.axhline(reference, color="gray", ls="--", label=reference_label)
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.legend(fontsize=8)
    return fig


def plot_seed_spread(
    values: Mapping[str, Sequence[float]], ylabel: str, chance: float | None = None
):
    """One bar per system at the mean over seeds, ± one standard deviation, seeds as dots."""
    fig, ax = _figure()
    for i, ys in enumerate(values.values()):
        ys = np.asarray(ys, dtype=float)
        ax.bar(i, ys.mean(), 0.6, yerr=ys.std(), capsize=4, alpha=0.7)
        ax.plot(np.full(len(ys), i), ys, "k.", ms=4)
    if chance is not None:
        ax.axhline(chance, color="gray", ls="--", label=f"chance = {chance:.3f}")
        ax.legend(fontsize=7)
    ax.set_xticks(range(len(values)), list(values), fontsize=7)
    ax.set(ylabel=ylabel, ylim=(0, 1.05))
    return fig


def pca_2d(points) -> tuple[np.ndarray, np.ndarray]:
    """Project points on their first two principal components (centred SVD).

    Args:
        points: Shape (n, dim).

    Returns:
        The projected points, shape (n, 2), and the share of variance each component
        explains, shape (2,).
    """
    x = np.asarray(points, dtype=np.float64)
    x = x - x.mean(0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T, (s[:2] ** 2) / (s**2).sum()


def plot_embedding_pca(panels: Mapping[str, tuple], links: int = 20):
    """Questions and answers in the 2-D PCA of their joint embeddings, one panel per model.

    Args:
        panels: title -> (q_emb, a_emb), row ``i`` of each being a question and its answer.
            Shapes (n, dim) and (n, dim).
        links: draw a thin line from question ``i`` to answer ``i`` for the first ``links`` pairs.

    Returns:
        The figure; each panel has its own projection.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(panels), figsize=(4 * len(panels), 3.2), layout="constrained", squeeze=False
    )
    axes = axes[0]
    for ax, (title, (q_emb, a_emb)) in zip(axes, panels.items()):
        n = len(q_emb)
        xy, share = pca_2d(np.concatenate([np.asarray(q_emb), np.asarray(a_emb)]))
        q_xy, a_xy = xy[:n], xy[n:]
        for i in range(min(links, n)):
            ax.plot(*zip(q_xy[i], a_xy[i]), color="gray", lw=0.5, alpha=0.6)
        ax.scatter(*q_xy.T, s=8, color="tab:blue", label="questions")
        ax.scatter(*a_xy.T, s=8, color="tab:orange", marker="^", label="answers")
        ax.set(
            title=title,
            xlabel=f"PC1 ({share[0]:.0%} of variance)",
            ylabel=f"PC2 ({share[1]:.0%})",
        )
        ax.legend(fontsize=7)
    return fig


def gathered_roles(n_devices: int, local_batch: int) -> np.ndarray:
    """What each cell of the all-gathered score matrix is, seen from the questions' device.

    Returns:
        2 for a question's own answer (the diagonal), 1 for a negative from the question's own
        device (what one device alone would see), 0 for a negative gathered from another
        device. Shape (n_devices * local_batch, n_devices * local_batch).
    """
    device = np.arange(n_devices * local_batch) // local_batch
    roles = (device[:, None] == device[None, :]).astype(int)
    np.fill_diagonal(roles, 2)
    return roles


def plot_gathered_negatives(n_devices: int = 2, local_batch: int = 4, device: int = 0, scores=None):
    """All-gathered negatives: every device scores its questions against every device's answers.

    Each device holds ``local_batch`` question-answer pairs; the answers are all-gathered, so the
    score matrix is (N B) x (N B) and each question has N B - 1 negatives instead of B - 1. The
    rows of ``device`` (the ones it computes the loss for) are outlined.

    Args:
        n_devices: N, the number of devices (processes).
        local_batch: B, pairs per device.
        device: whose rows to outline.
        scores: the matrix to show; None = the roles of :func:`gathered_roles`.

    Returns:
        The figure.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

    n = n_devices * local_batch
    fig, ax = _figure((4.6, 3.6))
    if scores is None:
        colours = ["#c6dbef", "#6baed6", "#08306b"]
        ax.imshow(
            gathered_roles(n_devices, local_batch), cmap=ListedColormap(colours), vmin=0, vmax=2
        )
        names = ("gathered negative", "local negative", "own answer")
        handles = [Patch(color=c, label=name) for c, name in zip(colours, names)]
        ax.legend(handles=handles[::-1], fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1))
    else:
        fig.colorbar(ax.imshow(np.asarray(scores), cmap="viridis"), ax=ax, shrink=0.8)
    for edge in range(local_batch, n, local_batch):  # device boundaries
        ax.axhline(edge - 0.5, color="white", lw=1.5)
        ax.axvline(edge - 0.5, color="white", lw=1.5)
    top = device * local_batch - 0.5
    box = Rectangle((-0.5, top), n, local_batch, fill=False, ec="tab:red", lw=3, zorder=5)
    ax.add_patch(box)
    box.set_clip_on(False)
    ticks = [d * local_batch + (local_batch - 1) / 2 for d in range(n_devices)]
    labels = [f"device {d}" for d in range(n_devices)]
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_yticks(ticks, labels, fontsize=7, rotation=90, va="center")
    ax.set(
        xlabel="answers, all-gathered",
        ylabel="questions (local to each device)",
        title=f"device {device}: {n - 1} negatives per question, not {local_batch - 1}",
    )
    return fig
