from __future__ import annotations

import math

import pytest
import torch

from qa_lib.config import DEMO_ANSWER, DEMO_DISTRACTOR, DEMO_QUESTION
from qa_lib.data import Pairs
from qa_lib.evaluate import demo_scores, evaluate
from qa_lib.metrics import METRIC_KEYS, build_task, rank_metrics
from tests.conftest import FixedModel


def test_rank_metrics_match_a_hand_computed_example():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.5, 0.2],  # relevant 0 -> rank 1
            [0.9, 0.1, 0.5, 0.2],  # relevant 2 -> rank 2
            [0.9, 0.1, 0.5, 0.2],  # relevant 1 -> rank 4
            [0.9, 0.1, 0.5, 0.2],  # relevant {3, 2} -> ranks 3 and 2
        ]
    )
    m = rank_metrics(scores, [[0], [2], [1], [3, 2]], ks=(1, 2, 3))
    assert m["recall@1"] == pytest.approx(1 / 4)
    assert m["recall@2"] == pytest.approx(3 / 4)
    assert m["recall@3"] == pytest.approx(3 / 4)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 4 + 1 / 2) / 4)
    assert m["mean_rank"] == pytest.approx((1 + 2 + 4 + 2) / 4)
    ideal2 = 1 + 1 / math.log2(3)
    ndcg = [1, 1 / math.log2(3), 1 / math.log2(5), (1 / math.log2(3) + 1 / math.log2(4)) / ideal2]
    assert m["ndcg@10"] == pytest.approx(sum(ndcg) / 4)


def test_ties_count_against_the_model():
    m = rank_metrics(torch.zeros(2, 5), [[0], [3]])
    assert m["recall@1"] == 0 and m["mean_rank"] == 5


def test_build_task_groups_repeated_questions():
    pairs = Pairs(["q1", "q1", "q2"], ["a", "b", "a"])
    task = build_task(pairs)
    assert task.questions == ["q1", "q2"] and task.candidates == ["a", "b"]
    assert task.relevant == [[0, 1], [0]]
    assert task.chance_recall_at_1 == pytest.approx((2 + 1) / (2 * 2))


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
