"""The diagram of the two towers and their score matrix that opens notebook 03.

Drawn with matplotlib patches, so the figure is code like every other plot of the course:
:func:`draw_two_towers` returns the ``Figure``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

# colours of the parts: one per role, reused in the score matrix
TOWER = {"question": "#dbe9f6", "answer": "#fde6cf"}
EDGE = {"question": "#3a6ea5", "answer": "#c0651b"}
FLAG = "#e4d4f4"  # the question flag: the detector and its extra column
POSITIVE, NEGATIVE = "#b7e1b0", "#f2f2f2"
TOKENS = {"question": "[CLS] what is the … [SEP]", "answer": "[CLS] the tallest … [SEP]"}
STEPS = (  # (label, y) of a tower's stages, bottom to top
    ("tokens", 4),
    ("BERT encoder (6 layers)", 14),
    ("mean pooling over tokens", 24),
    ("projection (optional)", 32),
    ("normalise: unit vector", 40),
)


def _box(ax, x: float, y: float, w: float, h: float, text: str, face: str, edge: str, **kw):
    """A rounded box centred at ``(x, y)`` with ``text`` in it."""
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle="round,pad=0.3,rounding_size=0.8",
            facecolor=face,
            edgecolor=edge,
            linewidth=1.2,
            linestyle=kw.pop("ls", "-"),
        )
    )
    ax.text(x, y, text, ha="center", va="center", fontsize=kw.pop("fontsize", 9), **kw)


def _arrow(ax, start, end, color: str = "#555555", **kw) -> None:
    ax.add_patch(
        FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=11, color=color, lw=1.1, **kw)
    )


def _tower(ax, x: float, side: str) -> None:
    """One tower: its stages bottom to top, arrows between them, its name on top."""
    for k, (label, y) in enumerate(STEPS):
        label = f"tokens: {TOKENS[side]}" if label == "tokens" else label
        dashed = "--" if label.startswith("projection") else "-"
        _box(ax, x, y, 23, 4.6, label, TOWER[side], EDGE[side], ls=dashed)
        if k:
            _arrow(ax, (x, STEPS[k - 1][1] + 2.6), (x, y - 2.6), EDGE[side])
    ax.text(x, 61.5, f"{side} tower", ha="center", fontsize=11, weight="bold", color=EDGE[side])


def _vector(ax, x: float, y: float, side: str, extra: str) -> None:
    """An embedding as a strip of cells: the tower's numbers, then the flag column."""
    cells = 6
    for k in range(cells):
        ax.add_patch(
            Rectangle(
                (x - 9 + 2.6 * k, y), 2.6, 2.8, facecolor=TOWER[side], edgecolor=EDGE[side], lw=0.8
            )
        )
    ax.add_patch(
        Rectangle(
            (x - 9 + 2.6 * cells + 0.6, y), 3.4, 2.8, facecolor=FLAG, edgecolor="#7a4fa3", lw=1.2
        )
    )
    ax.text(x - 9 + 2.6 * cells + 2.3, y + 1.4, extra, ha="center", va="center", fontsize=8.5)
    name = "q" if side == "question" else "a"
    ax.text(x - 10, y + 1.4, f"{name} =", ha="right", va="center", fontsize=10, style="italic")
    ax.text(x, y + 4.2, f"{name}_emb: (B, 384 + 1)", ha="center", fontsize=8, color=EDGE[side])
    _arrow(ax, (x, STEPS[-1][1] + 2.6), (x, y - 0.2), EDGE[side])


def _detector(ax, x_tower: float) -> None:
    """The question flag: a linear detector on the answer tower's layer 4, feeding a's last cell."""
    x, y = x_tower + 20, 22
    _box(ax, x, y, 13, 7.5, "question\ndetector\np(question)", FLAG, "#7a4fa3", fontsize=8.5)
    _arrow(ax, (x_tower + 11.8, 15), (x - 6.8, y - 1.5), "#7a4fa3")
    ax.text(x_tower + 12, 12.2, "layer 4", fontsize=7.5, color="#7a4fa3")
    _arrow(ax, (x, y + 4), (x_tower + 8.3, 48.6), "#7a4fa3", connectionstyle="arc3,rad=0.25")


def _cell(ax, x: float, y: float, size: float, positive: bool) -> None:
    """One score: green with "+" on the diagonal, grey with "−" elsewhere."""
    face, mark, color = (POSITIVE, "+", "#2e7d32") if positive else (NEGATIVE, "−", "#999999")
    ax.add_patch(Rectangle((x, y), size, size, facecolor=face, edgecolor="#999999", lw=0.8))
    ax.text(x + size / 2, y + size / 2, mark, ha="center", va="center", fontsize=11, color=color)


def _matrix(ax, x0: float, y0: float, n: int = 4, cell: float = 5.6) -> None:
    """The B x B score matrix: row i = question i, column j = answer j, diagonal = positives."""
    q_style = {"fontsize": 9, "color": EDGE["question"], "va": "center"}
    a_style = {"fontsize": 9, "color": EDGE["answer"], "ha": "center"}
    for i in range(n):
        for j in range(n):
            _cell(ax, x0 + j * cell, y0 + (n - 1 - i) * cell, cell, i == j)
        ax.text(x0 - 1, y0 + (n - 1 - i + 0.5) * cell, f"q{i + 1}", ha="right", **q_style)
        ax.text(x0 + (i + 0.5) * cell, y0 + n * cell + 1, f"a{i + 1}", **a_style)
    mid, top = x0 + n * cell / 2, y0 + n * cell
    rows = "rows: the B questions' q"
    ax.text(x0 - 5, y0 + n * cell / 2, rows, rotation=90, ha="center", **q_style)
    ax.text(mid, top + 3.6, "columns: the B answers' a", **a_style)
    title = "score matrix\nS = q_emb · a_embᵀ  (B × B)\n" + r"$S_{ij} = q_i \cdot a_j$"
    ax.text(mid, top + 7.5, title, ha="center", fontsize=10, weight="bold")
    legend = "+ diagonal: the correct pairs\n− off-diagonal: in-batch negatives"
    ax.text(mid, y0 - 3.2, legend, ha="center", va="top", fontsize=8.5)


def draw_two_towers(figsize: tuple[float, float] = (11.0, 5.4)):
    """Two towers side by side, their unit vectors with the flag column, and the score matrix.

    Args:
        figsize: the figure's size in inches.

    Returns:
        The matplotlib ``Figure``.
    """
    fig, ax = plt.subplots(figsize=figsize)
    ax.set_xlim(0, 104)
    ax.set_ylim(-4, 63)
    ax.axis("off")
    _tower(ax, 13, "question")
    _tower(ax, 41, "answer")
    _detector(ax, 41)
    _vector(ax, 13, 47, "question", "1")
    _vector(ax, 41, 47, "answer", "−p")
    _matrix(ax, 80, 14)
    ax.text(
        52,
        -2.5,
        "score(q, a) = cos(q, a) + 1 · (−p(a)):  one dot product; the flag column "
        "is 1 for questions, minus the detector's p for answers",
        ha="center",
        fontsize=8.5,
        color="#5b3d7a",
    )
    fig.suptitle(
        "Two towers, one dot product: a batch of B pairs gives a B × B score matrix", fontsize=12
    )
    fig.tight_layout()
    return fig
