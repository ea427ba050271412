"""Small figures for the notebooks (01-06) and the CLI; each function returns a Figure."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import numpy as np

LOG_LOSS_RATIO = 3.0  # plot_loss: a log y axis when chance is this many times the highest loss


def _figure(figsize=(5, 3)):
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize, layout="constrained")


def _short(text: str, width: int = 32, lines: int = 2) -> str:
    """A tick label: ``text`` wrapped to ``lines`` lines of ``width`` characters, then cut."""
    wrapped = textwrap.wrap(text, width) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: width - 1] + "…"
    return "\n".join(wrapped)


def plot_loss(
    step_loss: Sequence[float],
    chance_loss: float | None = None,
    smooth: int = 10,
    steps_per_epoch: int | None = None,
    ylabel: str = "training loss",
    chance_label: str = "chance",
    title: str = "Training loss per step",
):
    """Training loss per step, smoothed, with the chance level as a labelled dashed line.

    The y axis is fitted to the curve and the chance line together; when chance is far above the
    curve (``LOG_LOSS_RATIO``), it is logarithmic, so neither is squashed against an edge.

    Args:
        step_loss: the loss of each optimiser step (``History.step_loss``).
        chance_loss: the loss of a model that tells nothing apart (``History.chance_loss``:
            ln B for the in-batch loss, plus ``w ln 2`` with the question flag's detector loss).
        smooth: steps in the running mean drawn over the raw curve.
        steps_per_epoch: if given, dotted lines mark the ends of the epochs.
        ylabel: what the loss is (say which parts it sums).
        chance_label: what chance means for this loss; its value is appended.
        title: the figure's title.
    """
    fig, ax = _figure()
    losses = np.asarray(step_loss, dtype=float)
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, color="tab:blue", alpha=0.35, lw=1, label="loss per step")
    if len(losses) >= smooth > 1:
        mean = np.convolve(losses, np.ones(smooth) / smooth, mode="valid")
        ax.plot(steps[smooth - 1 :], mean, color="tab:blue", lw=2, label=f"mean of {smooth} steps")
    if steps_per_epoch:
        for end in range(steps_per_epoch, len(losses), steps_per_epoch):
            ax.axvline(end + 0.5, color="lightgray", ls=":", lw=1)
    top = float(np.nanmax(losses)) if len(losses) else 1.0
    if chance_loss is not None:
        ax.axhline(chance_loss, color="gray", ls="--", label=f"{chance_label} = {chance_loss:.2f}")
        top = max(top, chance_loss)
    positive = losses[losses > 0]
    if chance_loss is not None and len(positive) and chance_loss > LOG_LOSS_RATIO * losses.max():
        ax.set_yscale("log")
        ax.set_ylim(positive.min() / 1.5, top * 1.5)
        ylabel += " (log scale)"
    else:
        ax.set_ylim(0, top * 1.08)
    ax.set(xlabel="optimiser step", ylabel=ylabel, title=title)
    ax.legend(fontsize=7, loc="best")
    return fig


def _padded_range(values: Sequence[float]) -> tuple[float, float]:
    """A y range around metric values in [0, 1] in which a step of one question is visible."""
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    pad = max(0.04, 0.15 * (hi - lo))
    return max(-0.02, lo - pad), min(1.02, hi + pad)


def plot_epoch_metrics(
    epochs: Sequence[Mapping],
    keys=("recall@1", "mrr@10"),
    baseline: Mapping | None = None,
    best_epoch: int | None = None,
    title: str = "Validation metrics per epoch",
):
    """Validation metrics per epoch, one panel per metric, the untrained model as epoch 0.

    Args:
        epochs: ``History.epochs`` (each with ``"epoch"``, 1-based, and the metrics).
        keys: the metrics, one panel each (each with its own y range).
        baseline: the untrained model's metrics, drawn as the epoch-0 point.
        best_epoch: if given, a dashed line marks it.
        title: the figure's title.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(keys), figsize=(2.6 * len(keys) + 0.6, 2.8), layout="constrained", squeeze=False
    )
    colors = ("tab:green", "tab:orange", "tab:red", "tab:purple", "tab:brown")
    for ax, key, color in zip(axes[0], keys, colors * len(keys)):
        x = [e["epoch"] for e in epochs]
        y = [e.get(key, np.nan) for e in epochs]
        if baseline and key in baseline:
            x, y = [0, *x], [baseline[key], *y]
            ax.plot(0, baseline[key], "s", color="black", ms=6, label="untrained", zorder=3)
        ax.plot(x, y, marker="o", color=color, label="after the epoch")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="gray", ls="--", lw=1, label=f"best epoch ({best_epoch})")
        ax.set(xlabel="epoch", title=key, xticks=x, ylim=_padded_range(y))
    axes[0][0].set_ylabel("validation metric")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(title)
    return fig


def plot_metric_bars(
    results: Mapping[str, Mapping[str, float]],
    keys=("recall@1", "recall@5", "mrr@10", "ndcg@10", "question_echo_rate", "recall@1_with_echo"),
    chance: float | None = None,
    title: str = "Test metrics",
):
    """Grouped bars: one group per metric, one bar per system (e.g. untrained vs trained).

    Every bar carries its value; a value of 0 gets a thick stub on the axis, so it stays visible.
    """
    fig, ax = _figure((6, 3.2))
    width = 0.8 / max(1, len(results))
    for i, (name, metrics) in enumerate(results.items()):
        xs = np.arange(len(keys)) + i * width
        values = np.array([metrics.get(k, np.nan) for k in keys], dtype=float)
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
        zero = values == 0
        color = bars.patches[0].get_facecolor() if bars.patches else None
        ax.hlines(values[zero], xs[zero] - width / 2, xs[zero] + width / 2, color=color, lw=3)
    if chance is not None:
        ax.axhline(chance, color="gray", ls="--", lw=1, label=f"chance recall@1 = {chance:.3f}")
    labels = ["\n".join(textwrap.wrap(k.replace("_", " "), 10)) for k in keys]
    ax.set_xticks(np.arange(len(keys)) + width * (len(results) - 1) / 2, labels, fontsize=8)
    ax.set(ylim=(-0.04, 1.15), ylabel="score (0 to 1)")
    ax.set_title(title, loc="left")
    fig.legend(loc="outside upper right", ncols=3, fontsize=7)
    return fig


def plot_similarity(
    scores,
    questions: Sequence[str] | None = None,
    answers: Sequence[str] | None = None,
    title: str = "q_emb · a_emb",
):
    """Heatmap of a question-answer score matrix; a trained model shows a bright diagonal.

    Tick labels are the texts, wrapped on two lines at a readable size; each cell shows its score
    when the matrix is small enough to read them.
    """
    scores = np.asarray(scores, dtype=float)
    n_rows, n_cols = scores.shape
    fig, ax = _figure((3.2 + 0.5 * n_cols, 1.6 + 0.42 * n_rows))
    image = ax.imshow(scores, cmap="viridis")
    fig.colorbar(image, ax=ax, shrink=0.8, label="score")
    if max(n_rows, n_cols) <= 10:
        middle = (np.nanmax(scores) + np.nanmin(scores)) / 2
        for (i, j), value in np.ndenumerate(scores):
            color = "black" if value > middle else "white"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
    if questions is not None:
        ax.set_yticks(range(len(questions)), [_short(t) for t in questions], fontsize=8)
    if answers is not None:
        labels = [_short(t, 24) for t in answers]
        ax.set_xticks(range(len(answers)), labels, fontsize=8, rotation=60, ha="right")
    ax.set(xlabel="answer", ylabel="question", title=title)
    return fig


def plot_length_histogram(
    q_lengths: Sequence[int],
    a_lengths: Sequence[int],
    max_q_len: int | None = None,
    max_a_len: int | None = None,
    title: str = "Text lengths in tokens",
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
    ax.set(xlabel="tokens", ylabel="texts", title=title)
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
    title: str | None = None,
):
    """One line per named series over a shared x, with an optional dashed reference line.

    ``title`` defaults to "<ylabel> against <xlabel>".
    """
    fig, ax = _figure()
    for name, ys in series.items():
        ax.plot(x, ys, marker="o", ms=3, label=name)
    if reference is not None:
        ax.axhline(reference, color="gray", ls="--", label=reference_label)
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title or _short(f"{ylabel} against {xlabel}", 60), fontsize=10)
    ax.legend(fontsize=8)
    return fig


def plot_seed_spread(
    values: Mapping[str, Sequence[float]],
    ylabel: str,
    chance: float | None = None,
    title: str | None = None,
):
    """One bar per system at the mean over seeds, ± one standard deviation, seeds as dots.

    Each bar carries its mean; ``title`` defaults to "<ylabel>, mean over seeds".
    """
    fig, ax = _figure()
    for i, ys in enumerate(values.values()):
        ys = np.asarray(ys, dtype=float)
        bars = ax.bar(i, ys.mean(), 0.6, yerr=ys.std(), capsize=4, alpha=0.7)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
        ax.plot(np.full(len(ys), i), ys, "k.", ms=5, clip_on=False, zorder=3)
    if chance is not None:
        ax.axhline(chance, color="gray", ls="--", label=f"chance = {chance:.3f}")
        ax.legend(fontsize=7)
    ax.set_xticks(range(len(values)), list(values), fontsize=7)
    ax.set(ylabel=ylabel, ylim=(-0.03, 1.1))
    ax.set_title(title or f"{ylabel}, mean over seeds", fontsize=10)
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
    """Questions, answers and echoes in the 2-D PCA of their joint embeddings, one panel each.

    Args:
        panels: title -> ``(q_emb, a_emb)`` or ``(q_emb, a_emb, echo_emb)``, row ``i`` of each
            being a question, its answer, and the question read by the answer tower (its echo).
            Shapes (n, dim) each.
        links: for the first ``links`` questions, a grey line to the answer and a red one to
            the echo.

    Returns:
        The figure; each panel has its own projection, and its title says how much of the
        variance the two components explain.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(panels), figsize=(4 * len(panels), 3.6), layout="constrained", squeeze=False
    )
    axes = axes[0]
    kinds = (
        ("questions", "tab:blue", "o"),
        ("answers", "tab:orange", "^"),
        ("echoes", "tab:red", "x"),
    )
    for ax, (title, arrays) in zip(axes, panels.items()):
        n = len(arrays[0])
        xy, share = pca_2d(np.concatenate([np.asarray(x) for x in arrays]))
        parts = [xy[k * n : (k + 1) * n] for k in range(len(arrays))]
        for i in range(min(links, n)):
            for other, color in zip(parts[1:], ("gray", "tab:red")):
                ax.plot(*zip(parts[0][i], other[i]), color=color, lw=0.5, alpha=0.6)
        for points, (label, color, marker) in zip(parts, kinds):
            ax.scatter(*points.T, s=12, color=color, marker=marker, label=label, lw=1)
        ax.set(
            title=f"{title}\n(the 2 components: {share.sum():.0%} of the variance)",
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
