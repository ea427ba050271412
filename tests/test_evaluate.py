from __future__ import annotations

import math

import pytest
import torch

from qa_lib.config import DEMO_ANSWER, DEMO_DISTRACTOR, DEMO_QUESTION
from qa_lib.data import Pairs
from qa_lib.errors import QAError
from qa_lib.evaluate import demo_scores, evaluate
from qa_lib.metrics import METRIC_KEYS
from tests.conftest import FixedModel


def test_echo_rate_counts_ties_as_failures():
    pairs = Pairs(["q0", "q1", "q2"], ["a0", "a1", "a2"])
    e = torch.eye(3).tolist()
    answers = {"a0": [0.9, 0, 0], "a1": [0, 0.5, 0], "a2": [0, 0, 0.9]}
    echoes = {"q0": e[0], "q1": [0, 0.5, 0], "q2": [0, 0, 0.2]}  # beats, ties, loses
    metrics = evaluate(FixedModel(dict(zip(pairs.questions, e)), answers | echoes, 3), pairs)
    assert metrics["recall@1"] == 1.0
    assert metrics["question_echo_rate"] == pytest.approx(2 / 3)
    assert metrics["recall@1_with_echo"] == pytest.approx(1 / 3)


def test_evaluate_reports_every_key(tiny_model, tiny_splits):
    metrics = evaluate(tiny_model, tiny_splits[1])
    assert set(METRIC_KEYS) <= set(metrics)
    assert all(math.isfinite(metrics[k]) for k in METRIC_KEYS)
    assert metrics["n_questions"] == metrics["n_candidates"] == 32


def test_tied_cosine_encoder_always_fails_the_echo(tiny_config, tiny_splits):
    from qa_lib import DualEncoder

    tied = DualEncoder.from_config(tiny_config, tied=True)
    metrics = evaluate(tied, tiny_splits[1])
    assert metrics["question_echo_rate"] == 1.0 and metrics["recall@1_with_echo"] == 0.0


def test_demo_scores_are_sorted_and_cover_the_three_candidates(tiny_model):
    scores = demo_scores(tiny_model)
    assert {t for t, _ in scores} == {DEMO_QUESTION, DEMO_ANSWER, DEMO_DISTRACTOR}
    assert [s for _, s in scores] == sorted((s for _, s in scores), reverse=True)


def _mixed_pool_case():
    """Three questions; q1's own echo beats its answer, and q2's text (a paraphrase of q0, as the
    answer tower reads it) beats q0's answer; a2 starts with a question word."""
    questions = ["What is A?", "What is B?", "What is C?"]
    answers = ["A is a letter.", "B is a letter.", "How it works: C moves water."]
    e = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    q_vecs = dict(zip(questions, e))
    a_vecs = {a: [0.9 * x for x in v] for a, v in zip(answers, e)}
    a_vecs |= {questions[0]: [0.5, 0, 0], questions[1]: [0, 1.0, 0], questions[2]: [0.95, 0, 0]}
    return Pairs(questions, answers), FixedModel(q_vecs, a_vecs, 3)


def test_the_mixed_pool_counts_other_questions_that_outrank_the_answer():
    pairs, model = _mixed_pool_case()
    metrics = evaluate(model, pairs)
    assert metrics["question_echo_rate"] == pytest.approx(1 / 3)  # q1's own text
    assert metrics["mixed_pool_rate"] == pytest.approx(2 / 3)  # ... and q2's text for q0
    assert metrics["recall@1"] == 1.0 and metrics["answer_flag_rate"] == 0.0


def test_the_exact_filter_removes_the_echo_but_not_a_paraphrase():
    pairs, model = _mixed_pool_case()
    metrics = evaluate(model, pairs, echo_filter="exact")
    assert metrics["question_echo_rate"] == 0.0
    assert metrics["mixed_pool_rate"] == pytest.approx(1 / 3)  # q2's text still beats a0
    assert metrics["recall@1"] == 1.0


def test_the_rule_filter_removes_questions_and_answers_that_look_like_them():
    pairs, model = _mixed_pool_case()
    metrics = evaluate(model, pairs, echo_filter="rule")
    assert metrics["question_echo_rate"] == 0.0 and metrics["mixed_pool_rate"] == 0.0
    assert metrics["answer_flag_rate"] == pytest.approx(1 / 3)  # "How it works: ..."
    assert metrics["recall@1"] == pytest.approx(2 / 3)  # q2 lost its answer
    with pytest.raises(QAError, match="unknown echo filter"):
        evaluate(model, pairs, echo_filter="regex")


def test_question_rules():
    from qa_lib.evaluate import looks_like_question, normalized

    assert normalized("  What IS  it?! ") == "what is it"
    assert looks_like_question("who wrote hamlet") and looks_like_question("Hamlet, by whom?")
    assert not looks_like_question("Shakespeare wrote Hamlet.")
