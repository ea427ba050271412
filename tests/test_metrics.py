from __future__ import annotations

import math

import pytest
import torch

from qa_lib.data import Pairs
from qa_lib.metrics import build_task, rank_metrics


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
