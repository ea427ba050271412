from __future__ import annotations

import math

import pytest
import torch

from qa_lib.config import DEMO_ANSWER, DEMO_DISTRACTOR, DEMO_QUESTION
from qa_lib.data import Pairs
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
