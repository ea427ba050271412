"""qa_lib.hybrid: dense score + weighted BM25 share, the weight tuning and the hybrid evaluation."""

from __future__ import annotations

import pytest
import torch

from qa_lib.bm25 import lexical_scores
from qa_lib.data import Pairs
from qa_lib.errors import QAError
from qa_lib.evaluate import evaluate
from qa_lib.hybrid import fuse, hybrid_scores, tune_lexical_weight
from qa_lib.metrics import build_task, rank_metrics
from tests.conftest import FixedModel

# Each answer shares rare words with its question only; the questions share none with each other.
PAIRS = Pairs(
    [
        "When did the Normans conquer England?",
        "Which river flows through Budapest?",
        "Who painted the ceiling of the Sistine Chapel?",
        "What metal has the chemical symbol Fe?",
        "How many strings does a cello have?",
    ],
    [
        "The Normans conquered England in 1066 under William.",
        "The Danube flows through Budapest, splitting Buda from Pest.",
        "Michelangelo painted the Sistine Chapel ceiling between 1508 and 1512.",
        "Iron, symbol Fe, is the most common element on Earth by mass.",
        "A cello has four strings tuned in fifths.",
    ],
)


def one_hot(i: int) -> list[float]:
    return [float(i == j) for j in range(len(PAIRS))]


def perfect_model() -> FixedModel:
    """Question i and answer i share the one-hot vector e_i; the answer tower maps questions
    (the echoes) to zeros."""
    return FixedModel(
        {q: one_hot(i) for i, q in enumerate(PAIRS.questions)},
        {a: one_hot(i) for i, a in enumerate(PAIRS.answers)},
        len(PAIRS),
    )


def test_fuse_adds_the_weighted_share_of_the_self_score():
    dense = torch.tensor([[0.5, 0.2, -0.1], [0.0, 0.3, 0.3]])
    lexical = torch.tensor([[2.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
    own = torch.tensor([8.0, 0.0])  # the second question has no indexable word: share 0
    fused = fuse(dense, lexical, own, 0.4)
    assert torch.allclose(fused, torch.tensor([[0.6, 0.4, -0.1], [0.0, 0.3, 0.3]]))
    assert fuse(dense, lexical, own, 0.0) is dense
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(QAError, match="lexical weight"):
            fuse(dense, lexical, own, bad)


def test_hybrid_evaluation_of_an_uninformative_model_is_the_bm25_ranking():
    blind = FixedModel({}, {}, 4)  # every score 0: the hybrid order is BM25's
    task = build_task(PAIRS)
    bm25 = rank_metrics(lexical_scores(task.candidates, task.questions)[0], task.relevant)
    hybrid = evaluate(blind, PAIRS, lexical_weight=1.0)
    assert hybrid["recall@1"] == bm25["recall@1"] == 1.0
    assert hybrid["mrr@10"] == pytest.approx(bm25["mrr@10"])
    assert evaluate(blind, PAIRS)["recall@1"] == 0.0  # all ties: dense alone ranks nothing


def test_hybrid_echo_uses_the_dense_flag_and_the_lexical_echo():
    # an echo the answer tower scores 0 gains the weight (it matches all its words) and
    # stays below its answer (1 + the weight times its share); one scored as high as its
    # answer wins, as it does without BM25
    model = perfect_model()
    assert evaluate(model, PAIRS)["question_echo_rate"] == 0.0
    hybrid = evaluate(model, PAIRS, lexical_weight=0.5)
    assert hybrid["recall@1"] == 1.0 and hybrid["question_echo_rate"] == 0.0
    model.a_vectors.update((q, one_hot(i)) for i, q in enumerate(PAIRS.questions))
    dense = evaluate(model, PAIRS)
    assert dense["recall@1"] == 1.0 and dense["question_echo_rate"] == 1.0
    hybrid = evaluate(model, PAIRS, lexical_weight=0.5)
    assert hybrid["question_echo_rate"] == 1.0 and hybrid["recall@1_with_echo"] == 0.0


def test_tuning_keeps_a_perfect_dense_model_and_adds_bm25_to_a_blind_one():
    weight, mrr = tune_lexical_weight(perfect_model(), PAIRS, weights=(0.0, 0.5, 1.0))
    assert weight == 0.0 and mrr[0.0] == 1.0  # ties go to the smaller weight
    weight, mrr = tune_lexical_weight(FixedModel({}, {}, 4), PAIRS, weights=(0.0, 0.5, 1.0))
    assert weight == 0.5 and mrr[0.0] < mrr[0.5] == 1.0


def test_hybrid_scores_add_the_lexical_share_to_the_model_scores():
    scores = hybrid_scores(perfect_model(), PAIRS.questions[:2], PAIRS.answers, weight=0.3)
    assert scores.shape == (2, 5) and scores.argmax(1).tolist() == [0, 1]
    blind = hybrid_scores(FixedModel({}, {}, 4), PAIRS.questions[:1], PAIRS.answers, weight=0.3)
    assert blind.argmax(1).tolist() == [0] and blind.max().item() < 0.3
    assert torch.equal(
        hybrid_scores(perfect_model(), PAIRS.questions, PAIRS.answers, 0.0), torch.eye(5)
    )


def test_a_flagged_echo_gets_no_lexical_share():
    # the answer tower scores each echo 0.9 (its flag's -1 included), its answer 1.0; BM25 gives
    # the echo its whole self score (share 1) and the answer less, so with weight 0.9 the echo
    # would win; flagged by the question flag, it gets no share and stays below its answer
    lexical, own = lexical_scores(PAIRS.answers, PAIRS.questions)
    assert (lexical.diagonal() / own < 0.85).all()  # every answer's share below 0.85
    dim = len(PAIRS) + 1
    q_vecs = {q: one_hot(i) + [1.0] for i, q in enumerate(PAIRS.questions)}
    a_vecs = {a: one_hot(i) + [0.0] for i, a in enumerate(PAIRS.answers)}
    a_vecs |= {q: [1.9 * x for x in one_hot(i)] + [-1.0] for i, q in enumerate(PAIRS.questions)}
    model = FixedModel(q_vecs, a_vecs, dim)
    assert evaluate(model, PAIRS)["question_echo_rate"] == 0.0
    assert evaluate(model, PAIRS, lexical_weight=0.9)["question_echo_rate"] == 1.0  # no prior
    model.has_question_flag = True
    flagged = evaluate(model, PAIRS, lexical_weight=0.9)
    assert flagged["question_echo_rate"] == 0.0 and flagged["recall@1_with_echo"] == 1.0
