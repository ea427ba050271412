"""The score explorer: scores, ranks, softmax and the flag per model; widgets and their fallback."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FixedModel

from qa_lib import QAError
from qa_lib.explore import (
    StaticExplorer,
    explore_scores,
    explore_table,
    explorer,
    pair_candidates,
)

QUESTION = "q"
CANDIDATES = ["a", "b", "c"]


@pytest.fixture
def fixed():
    return FixedModel({"q": [1.0, 0.0]}, {"a": [0.2, 0.0], "b": [0.9, 0.0], "c": [0.2, 1.0]}, 2)


def test_scores_ranks_and_softmax_by_hand(fixed):
    rows = explore_scores(QUESTION, CANDIDATES, {"m": fixed}, temperature=0.5)["m"]
    assert [r["candidate"] for r in rows] == CANDIDATES  # input order
    assert [r["score"] for r in rows] == pytest.approx([0.2, 0.9, 0.2])
    assert [r["rank"] for r in rows] == [2, 1, 2]  # ties share the better rank
    exp = [math.exp(s / 0.5) for s in (0.2, 0.9, 0.2)]
    assert [r["softmax"] for r in rows] == pytest.approx([e / sum(exp) for e in exp])
    assert all(r["flag_probability"] is None for r in rows)  # no flag on this model


def test_a_lower_temperature_sharpens_the_softmax(fixed):
    def best(t: float) -> float:
        return explore_scores(QUESTION, CANDIDATES, {"m": fixed}, t)["m"][1]["softmax"]

    assert best(0.05) > best(0.5) > best(5.0) > 1 / 3


def test_the_flag_column_is_the_models_question_probability(tiny_model):
    with torch.no_grad():
        tiny_model.question_flag.probe.bias.fill_(1.0)  # p = sigmoid(1) for every text
    texts = ["who wrote hamlet?", "Shakespeare wrote Hamlet."]
    rows = explore_scores("who wrote hamlet?", texts, {"t": tiny_model})["t"]
    expected = tiny_model.question_probability(texts).tolist()
    assert [r["flag_probability"] for r in rows] == pytest.approx(expected)
    assert expected[0] == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-5)
    scores = tiny_model.score(["who wrote hamlet?"], texts)[0].tolist()
    assert [r["score"] for r in rows] == pytest.approx(scores, abs=1e-6)


@pytest.mark.parametrize(
    "question, candidates, temperature, needle",
    [
        (" ", ["a"], 1.0, "type a question"),
        ("q", ["", " "], 1.0, "candidate"),
        ("q", ["a"], 0, "positive"),
    ],
)
def test_bad_inputs_are_one_clear_error(fixed, question, candidates, temperature, needle):
    with pytest.raises(QAError, match=needle):
        explore_scores(question, candidates, {"m": fixed}, temperature)


def test_table_puts_models_side_by_side(fixed):
    other = FixedModel({"q": [0.0, 1.0]}, {"a": [0.2, 0.0], "b": [0.9, 0.0], "c": [0.2, 1.0]}, 2)
    table = explore_table(explore_scores(QUESTION, CANDIDATES, {"before": other, "after": fixed}))
    lines = table.splitlines()
    assert "before score" in lines[0] and "after rank" in lines[0]
    assert len(lines) == 2 + len(CANDIDATES)
    row_c = next(line for line in lines if line.startswith("| c |"))
    assert row_c.split("|")[2].strip() == "1.000"  # before: c scores 1 with q = (0, 1)


def test_pair_candidates_hold_the_answer_the_echo_and_others(tiny_splits):
    test = tiny_splits[1]
    question, candidates = pair_candidates(test, 3, n_others=4)
    assert question == test.questions[3]
    assert candidates[:2] == [test.answers[3], test.questions[3]]
    assert len(candidates) == 6 and len(set(candidates)) == 6


def test_without_widgets_it_is_a_table_with_widgets_it_refreshes(fixed, tiny_splits):
    static = explorer({"m": fixed}, interactive=False)
    assert isinstance(static, StaticExplorer) and "m score" in str(static)
    pytest.importorskip("ipywidgets")
    ui = explorer({"m": fixed}, tiny_splits[1], interactive=True)
    pick, question, candidates, slider, table = ui.children
    before = table.value
    question.value, candidates.value = QUESTION, "\n".join(CANDIDATES)
    assert "<td>0.900</td>" in table.value and table.value != before
    sharp = table.value
    slider.value = 5.0
    assert table.value != sharp  # the softmax column follows the temperature
    pick.value = 0
    assert question.value == tiny_splits[1].questions[0]
    candidates.value = ""
    assert "candidate" in table.value and "<b>" in table.value  # the error, shown
