"""The tower diagram of notebook 03: the parts it must show are there."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.colors import to_hex
from matplotlib.patches import Rectangle

from qa_lib.diagrams import POSITIVE, draw_two_towers


def test_the_diagram_shows_both_towers_the_flag_column_and_the_marked_diagonal():
    fig = draw_two_towers()
    ax = fig.axes[0]
    texts = " | ".join(t.get_text() for t in ax.texts)
    for part in (
        "question tower",
        "answer tower",
        "BERT encoder",
        "mean pooling",
        "projection",
        "unit vector",
        "question\ndetector",
        "−p",
        "B × B",
    ):
        assert part in texts, part
    cells = [p for p in ax.patches if isinstance(p, Rectangle)]
    diagonal = [p for p in cells if to_hex(p.get_facecolor()) == POSITIVE]
    assert len(diagonal) == 4  # one marked cell per row of the 4 x 4 score matrix
    rows = sorted({round(p.get_y(), 3) for p in diagonal})
    cols = sorted({round(p.get_x(), 3) for p in diagonal})
    assert len(rows) == len(cols) == 4  # on the diagonal: one per row and one per column
    plt.close(fig)
