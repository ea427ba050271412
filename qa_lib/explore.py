"""An interactive score explorer for notebook 05: a question, candidates, each model's verdict.

:func:`explore_scores` is the tested core: for one question and its candidate answers it
returns, per model, each candidate's score, rank, softmax probability at a temperature (the
training loss's ``1 / scale``) and the question flag's probability that the candidate is a
question. :func:`explorer` wraps it in ipywidgets (a text box, a candidate list, a test pair to
pick, a temperature slider); without ipywidgets or a kernel it returns the table as text.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from qa_lib.config import DEMO_ANSWER, DEMO_DISTRACTOR, DEMO_QUESTION, TrainConfig
from qa_lib.data import Pairs
from qa_lib.errors import QAError
from qa_lib.reporting import markdown_table

TEMPERATURE = 1 / TrainConfig().scale  # the training loss's softmax temperature (0.05)
DEMO_CANDIDATES = (DEMO_QUESTION, DEMO_ANSWER, DEMO_DISTRACTOR)


def explore_scores(
    question: str,
    candidates: Sequence[str],
    models: Mapping[str, object],
    temperature: float = TEMPERATURE,
) -> dict[str, list[dict]]:
    """Score one question against its candidates with each model.

    Args:
        question: the question.
        candidates: the candidate answers (the question's own text among them shows the echo).
        models: name -> a dual encoder (anything with ``score``; ``question_probability`` and
            ``has_question_flag`` for the flag column), e.g. ``{"untrained": m0, "trained": m1}``.
        temperature: the softmax temperature; the loss trains at ``1 / scale`` = 0.05.

    Returns:
        Per model, one row per candidate in input order: ``candidate``, ``score``, ``rank``
        (1 = best; equal scores share the better rank), ``softmax`` (sums to 1 over the
        candidates) and ``flag_probability`` (None for a model without a question flag).

    Raises:
        QAError: an empty question, no candidates, or a temperature that is not positive.
    """
    candidates = [c for c in candidates if c.strip()]
    if not question.strip():
        raise QAError("type a question to score the candidates against")
    if not candidates:
        raise QAError("give at least one candidate answer (one per line)")
    if not temperature > 0:
        raise QAError(f"temperature {temperature}: use a positive number (training uses 0.05)")
    return {name: _model_rows(m, question, candidates, temperature) for name, m in models.items()}


def _model_rows(model, question: str, candidates: list[str], temperature: float) -> list[dict]:
    scores = model.score([question], candidates)[0].double()  # (n_candidates,)
    softmax = torch.softmax(scores / temperature, dim=0)
    ranks = 1 + (scores[None, :] > scores[:, None]).sum(1)
    flags = None
    if getattr(model, "has_question_flag", False):
        flags = model.question_probability(candidates).tolist()
    return [
        {
            "candidate": text,
            "score": scores[i].item(),
            "rank": int(ranks[i]),
            "softmax": softmax[i].item(),
            "flag_probability": None if flags is None else flags[i],
        }
        for i, text in enumerate(candidates)
    ]


def pair_candidates(pairs: Pairs, index: int, n_others: int = 4) -> tuple[str, list[str]]:
    """A test pair as an explorer example: its question, and as candidates its answer, the
    question's own text (the echo) and the answers of the next ``n_others`` other questions.
    """
    question, answer = pairs.questions[index], pairs.answers[index]
    others: list[str] = []
    for step in range(1, len(pairs)):
        j = (index + step) % len(pairs)
        if pairs.questions[j] != question and pairs.answers[j] not in (answer, *others):
            others.append(pairs.answers[j])
        if len(others) == n_others:
            break
    return question, [answer, question, *others]


def _cells(row: dict) -> dict[str, str]:
    flag = row["flag_probability"]
    return {
        "score": f"{row['score']:.3f}",
        "rank": str(row["rank"]),
        "softmax": f"{row['softmax']:.3f}",
        "p(question)": "-" if flag is None else f"{flag:.3f}",
    }


def explore_table(results: Mapping[str, list[dict]]) -> str:
    """A Markdown table of :func:`explore_scores`: a row per candidate, the models side by side."""
    columns = [f"{name} {c}" for name in results for c in _cells_keys()]
    rows: dict[str, dict[str, str]] = {}
    for name, model_rows in results.items():
        for row in model_rows:
            cells = rows.setdefault(row["candidate"].replace("|", "/")[:80], {})
            cells.update({f"{name} {k}": v for k, v in _cells(row).items()})
    return markdown_table(rows, columns, "candidate")


def explore_html(results: Mapping[str, list[dict]]) -> str:
    """The same table as :func:`explore_table`, as HTML for a widget."""
    names = list(results)
    head = "".join(f"<th>{html.escape(n)}: {c}</th>" for n in names for c in _cells_keys())
    body = []
    for i, row in enumerate(results[names[0]]):
        cells = "".join(f"<td>{v}</td>" for n in names for v in _cells(results[n][i]).values())
        body.append(f"<tr><td>{html.escape(row['candidate'][:120])}</td>{cells}</tr>")
    return f"<table><tr><th>candidate</th>{head}</tr>{''.join(body)}</table>"


def _cells_keys() -> tuple[str, ...]:
    return ("score", "rank", "softmax", "p(question)")


@dataclass
class StaticExplorer:
    """What :func:`explorer` returns without widgets: the table of one example, as text."""

    question: str
    table: str

    def __str__(self) -> str:
        return f"question: {self.question}\n\n{self.table}"

    def _repr_markdown_(self) -> str:
        return f"**question:** {html.escape(self.question)}\n\n{self.table}"


def widgets_available() -> bool:
    """Whether ipywidgets is installed and a Jupyter kernel is running (a front-end may draw it)."""
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def explorer(
    models: Mapping[str, object],
    pairs: Pairs | None = None,
    temperature: float = TEMPERATURE,
    interactive: bool | None = None,
):
    """The score explorer: widgets where a kernel can show them, else the table of the demo.

    Args:
        models: name -> dual encoder, shown side by side (e.g. before and after training).
        pairs: held-out pairs to pick an example from (the Dropdown); None: the demo only.
        temperature: the slider's starting temperature.
        interactive: True = widgets, False = text; None = widgets when :func:`widgets_available`.

    Returns:
        An ipywidgets ``VBox``, or a :class:`StaticExplorer` (prints as a table).
    """
    if interactive is None:
        interactive = widgets_available()
    if not interactive:
        table = explore_table(explore_scores(DEMO_QUESTION, DEMO_CANDIDATES, models, temperature))
        return StaticExplorer(DEMO_QUESTION, table)
    return _widget(models, pairs, temperature)


def _widget(models: Mapping[str, object], pairs: Pairs | None, temperature: float):
    """The ipywidgets UI: question, candidates (one per line), a test pair, a temperature."""
    import ipywidgets as w

    question = w.Text(value=DEMO_QUESTION, description="question", layout={"width": "90%"})
    candidates = w.Textarea(
        value="\n".join(DEMO_CANDIDATES), description="candidates", layout={"width": "90%"}
    )
    options = [("the lesson's demo", -1)]
    if pairs is not None:
        options += [(f"test {i}: {q[:60]}", i) for i, q in enumerate(pairs.questions[:200])]
    pick = w.Dropdown(options=options, value=-1, description="example")
    slider = w.FloatLogSlider(value=temperature, base=10, min=-2, max=1, description="temperature")
    table = w.HTML()

    def refresh(_=None) -> None:
        try:
            results = explore_scores(
                question.value, candidates.value.splitlines(), models, slider.value
            )
            table.value = explore_html(results)
        except QAError as exc:
            table.value = f"<b>{html.escape(str(exc))}</b>"

    def choose(_=None) -> None:
        q, cands = (
            (DEMO_QUESTION, list(DEMO_CANDIDATES))
            if pick.value < 0
            else pair_candidates(pairs, pick.value)
        )
        question.value, candidates.value = q, "\n".join(cands)

    pick.observe(choose, names="value")
    for box in (question, candidates, slider):
        box.observe(refresh, names="value")
    refresh()
    return w.VBox([pick, question, candidates, slider, table])
