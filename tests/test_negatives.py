"""BM25-mined hard negatives: what is mined, what is filtered, and how training uses them."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from qa_lib import DualEncoder, TrainConfig
from qa_lib.batching import collate, tokenize_pairs
from qa_lib.data import Pairs
from qa_lib.errors import QAError
from qa_lib.negatives import mine_bm25_negatives
from qa_lib.step import cached_step, train_step
from qa_lib.train import fit

QUESTIONS = [
    "what is the boiling point of water",
    "who painted the mona lisa",
    "what is the freezing point of water",
    "how tall is mount everest",
]
ANSWERS = [
    "The boiling point of water is 100 degrees Celsius at sea level.",
    "Leonardo da Vinci painted the Mona Lisa in Florence.",
    "The freezing point of water is 0 degrees Celsius.",
    "Mount Everest is 8,849 metres tall.",
]


def test_mining_finds_the_lexically_closest_wrong_answer():
    negatives = mine_bm25_negatives(Pairs(QUESTIONS, ANSWERS), k=1)
    assert negatives[0] == [2]  # boiling point of water -> the freezing-point answer
    assert negatives[2] == [0]
    assert all(len(n) <= 1 and i not in n for i, n in enumerate(negatives))


def test_false_negatives_are_filtered():
    questions = [*QUESTIONS, "boiling point of water in celsius", QUESTIONS[0]]
    answers = [
        *ANSWERS,
        ANSWERS[0],  # the same answer text under another question: never a negative of row 0
        "Water boils at 100 degrees.",  # a second answer of question 0: never its negative
    ]
    negatives = mine_bm25_negatives(Pairs(questions, answers), k=3)
    assert negatives[0] == [2]  # not row 4 (same text) nor row 5 (another answer of it)
    assert 0 not in negatives[4] and 0 not in negatives[5]
    assert all(4 not in n for n in negatives)  # an answer text is named by its first row
    # row 5's own answer shares only "water" with it: every better match may be correct, so none
    assert negatives[5] == []


def test_candidates_scoring_near_the_positive_are_skipped():
    questions = ["boiling point of water", "who painted the mona lisa"]
    answers = ["Water is a liquid; its boiling point is 100.", "Boiling point of water: 100."]
    # the second answer matches the first question better than its own answer: a likely false
    # negative, so it is skipped at the default ratio, and taken when the filter is off
    assert mine_bm25_negatives(Pairs(questions, answers))[0] == []
    assert mine_bm25_negatives(Pairs(questions, answers), max_ratio=math.inf)[0] == [1]


def test_bad_k_is_a_user_error():
    with pytest.raises(QAError, match="k >= 1"):
        mine_bm25_negatives(Pairs(QUESTIONS, ANSWERS), k=0)


def hand_loss(model, data, idx, negatives, scale):
    """The loss written out: batch + k*batch answer columns, own answer on the diagonal.

    A column holding a row's own answer anywhere but the diagonal is not a negative: masked.
    """
    rows = idx + [j for i in idx for j in negatives[i]]
    q_emb = model.embed_questions(collate([data.q_tokens[i] for i in idx], data.pad_id))
    a_emb = model.embed_answers(collate([data.a_tokens[i] for i in rows], data.pad_id))
    assert a_emb.shape[0] == len(idx) + sum(len(negatives[i]) for i in idx)
    logits = scale * q_emb @ a_emb.T  # (batch, batch + k * batch)
    for r, i in enumerate(idx):
        for c, j in enumerate(rows):
            if c != r and data.answer_keys[j] == data.answer_keys[i]:
                logits[r, c] = -math.inf
    return F.cross_entropy(logits, torch.arange(len(idx)))


def test_train_step_adds_hard_negative_columns(tiny_model):
    pairs = Pairs(QUESTIONS, ANSWERS)
    data = tokenize_pairs(tiny_model, pairs)
    data.negatives = [[2], [3], [0], [1]]
    config = TrainConfig(flag_loss_weight=0.0, hard_negatives=1, precision="fp32")
    tiny_model.eval()  # no dropout, so the step and the hand computation see the same model
    for idx in ([0, 1], [0, 1, 2, 3]):  # negatives outside the batch; inside it (some masked)
        loss = train_step(tiny_model, data, idx, config)
        with torch.no_grad():
            expected = hand_loss(tiny_model, data, idx, data.negatives, config.scale)
            plain = hand_loss(tiny_model, data, idx, [[]] * 4, config.scale)
        torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
        assert not torch.isclose(loss, plain)  # the extra columns change the loss


def test_gradient_caching_uses_the_same_hard_negatives(tiny_model):
    data = tokenize_pairs(tiny_model, Pairs(QUESTIONS, ANSWERS))
    data.negatives = [[2], [3], [0], [1]]
    config = TrainConfig(flag_loss_weight=0.0, grad_cache_chunk=2, precision="fp32")
    tiny_model.eval()
    cached = cached_step(tiny_model, data, [0, 1, 2, 3], config)
    plain = train_step(
        tiny_model, data, [0, 1, 2, 3], TrainConfig(flag_loss_weight=0.0, precision="fp32")
    )
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)


def test_fit_mines_and_trains_with_hard_negatives(tiny_config, tiny_splits):
    model = DualEncoder.from_config(tiny_config, seed=0)
    config = TrainConfig(num_epochs=1, batch_size=16, max_steps=3, hard_negatives=2)
    history = fit(model, tiny_splits[0], config=config, progress=False)
    assert len(history.step_loss) == 3
    # with 16 in-batch answers plus up to 32 hard negatives, the first loss exceeds ln 16
    assert all(math.isfinite(x) for x in history.step_loss)
    assert history.step_loss[0] > math.log(16)
