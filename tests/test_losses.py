from __future__ import annotations

import math

import torch
from torch.testing import assert_close

from qa_lib.losses import duplicate_mask, in_batch_loss


def _hand_loss(scores: list[list[float]]) -> float:
    """Mean over rows of -log softmax(row)[i], written out with math."""
    total = 0.0
    for i, row in enumerate(scores):
        total += -(row[i] - math.log(sum(math.exp(s) for s in row)))
    return total / len(scores)


def test_matches_a_hand_computed_example():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    a = torch.tensor([[0.8, 0.6], [0.6, 0.8]])
    # scale 2: scores = 2 * q @ a.T = [[1.6, 1.2], [1.2, 1.6]]
    expected = _hand_loss([[1.6, 1.2], [1.2, 1.6]])
    assert abs(expected - 0.5130153) < 1e-6
    assert_close(in_batch_loss(q, a, scale=2.0, echo_emb=None), torch.tensor(expected))


def test_chance_level_is_ln_batch():
    q = torch.ones(8, 4)
    assert_close(in_batch_loss(q, q.clone(), scale=5.0), torch.tensor(math.log(8)))


def test_symmetric_averages_both_directions():
    torch.manual_seed(0)
    q, a = torch.randn(5, 3), torch.randn(5, 3)
    forward = in_batch_loss(q, a, scale=1.0)
    backward = in_batch_loss(a, q, scale=1.0)
    assert_close(in_batch_loss(q, a, scale=1.0, symmetric=True), (forward + backward) / 2)


def test_duplicate_answers_are_not_negatives():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    ids = torch.tensor([7, 7, 9])  # answers 0 and 1 are the same text
    mask = duplicate_mask(ids, 3)
    assert mask.tolist() == [[False, True, False], [True, False, False], [False, False, False]]
    masked = in_batch_loss(q, a, scale=1.0, answer_keys=ids)
    # with the duplicate masked, rows 0 and 1 see only their own answer (1.0) and answer 2 (0.0);
    # row 2 sees all three: 0.0, 0.0 and its own 1.0
    rows_01 = -(1.0 - math.log(math.e + 1))
    row_2 = -(1.0 - math.log(1 + 1 + math.e))
    expected = (2 * rows_01 + row_2) / 3
    assert_close(masked, torch.tensor(expected))
    assert masked < in_batch_loss(q, a, scale=1.0)


def test_hard_negatives_add_columns():
    torch.manual_seed(1)
    q, a, hard = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    loss = in_batch_loss(q, torch.cat([a, hard]), scale=1.0)
    scores = (q @ torch.cat([a, hard]).T).tolist()
    assert_close(loss, torch.tensor(_hand_loss(scores)))


def test_echo_is_an_extra_weighted_negative():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    a = torch.tensor([[0.8, 0.6], [0.6, 0.8]])
    echo = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # a tied cosine encoder: echo == question
    loss = in_batch_loss(q, a, scale=2.0, echo_emb=echo, echo_weight=3.0)
    # the echo logit is 2 * 1.0, counted 3 times: + ln 3
    rows = [[1.6, 1.2, 2.0 + math.log(3)], [1.2, 1.6, 2.0 + math.log(3)]]
    assert_close(loss, torch.tensor(_hand_loss(rows)))
    assert loss > in_batch_loss(q, a, scale=2.0)
