"""Hybrid ranking: the dual encoder's score plus a weighted BM25 score (notebook 05, section 8).

A dense tower squeezes a passage into one vector. It keeps the topic and the paraphrases and loses
some of the exact rare words: names, dates, numbers. BM25 keeps exactly those words and nothing
else. Where questions reuse the passage's words (SQuAD's were written while reading the
paragraph) BM25 beats a small dense model; the sum of the two beats both, because they make
different mistakes.

BM25 has no fixed scale (a sum of idf weights that grows with the question's length and the
rarity of its words), so each question's BM25 scores are divided by its score against its own
text, the most any candidate can match::

    hybrid(q, d) = dense(q, d) + weight * bm25(q, d) / bm25(q, q)

The lexical term is the idf-weighted share of the question a candidate matches: between 0 and 1
for nearly every candidate, on the scale of the cosine. ``weight`` is chosen on held-out pairs
with :func:`tune_lexical_weight`; 0 is the dense model.

A candidate the question flag marks as a question gets no lexical share (a share scaled by
``1 + flag``: none when fully flagged). The question's own text
(the echo) matches every one of its words, so BM25 would hand it back the top place that the
flag took away (measured on SQuAD quick: echo rate 0.152 when flagged candidates kept their
share, 0.004 when they get none).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qa_lib.bm25 import lexical_scores
from qa_lib.errors import QAError
from qa_lib.metrics import build_task, rank_metrics
from qa_lib.question_flag import flag_column

DEFAULT_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)  # the grid tune_lexical_weight tries


def fuse(
    dense: torch.Tensor,
    lexical: torch.Tensor,
    self_scores: torch.Tensor,
    weight: float,
    flags: torch.Tensor | None = None,
) -> torch.Tensor:
    """``dense + weight * lexical / self_scores``: the hybrid score.

    Args:
        dense: dual-encoder scores. Shape (n_questions, n).
        lexical: BM25 scores of the same pairs. Shape (n_questions, n).
        self_scores: each question's BM25 score against its own text. Shape (n_questions,).
        weight: the lexical share's weight (0: the dense score).
        flags: the question flag's search column of each candidate, in [-1, 0]: the lexical
            share is scaled by ``1 + flag``, so a fully flagged candidate gets none. One per
            candidate, shape (n,), or broadcastable to (n_questions, n). None: no flag.

    Returns:
        The fused scores. Shape (n_questions, n).
    """
    if not 0 <= weight < float("inf"):
        raise QAError(f"lexical weight must be a finite number >= 0, got {weight}")
    if not weight:
        return dense
    share = torch.as_tensor(lexical).float() / torch.as_tensor(self_scores).float()[:, None]
    share = share.nan_to_num(0.0)  # a question without an indexable word (0 / 0): no share
    if flags is not None:
        share = share * (1.0 + flags)
    return dense + weight * share


def hybrid_scores(
    model, questions: Sequence[str], candidates: Sequence[str], weight: float
) -> torch.Tensor:
    """Score every question against every candidate with the dual encoder plus BM25.

    Args:
        model: a :class:`~qa_lib.encoders.DualEncoder`.
        questions: the queries.
        candidates: the pool.
        weight: the lexical share's weight (see :func:`tune_lexical_weight`).

    Returns:
        ``dense + weight * bm25(q, d) / bm25(q, q)``; higher is better.
        Shape (len(questions), len(candidates)).
    """
    q_emb, a_emb = model.encode_questions(questions), model.encode_answers(candidates)
    if not weight:
        return q_emb @ a_emb.T
    flags = flag_column(model, a_emb)
    return fuse(q_emb @ a_emb.T, *lexical_scores(candidates, questions), weight, flags)


def tune_lexical_weight(
    model, pairs, weights: Sequence[float] = DEFAULT_WEIGHTS, batch_size: int = 64
) -> tuple[float, dict[float, float]]:
    """The BM25 weight with the best MRR@10 on held-out pairs (never the test pairs).

    Args:
        model: a :class:`~qa_lib.encoders.DualEncoder`.
        pairs: validation pairs; their unique answers (or corpus) are the pool.
        weights: the weights to try.
        batch_size: texts per forward pass.

    Returns:
        (best weight, {weight: MRR@10}); ties go to the smaller weight.
    """
    task = build_task(pairs)
    if len(task.candidates) < 2:
        raise QAError("tune_lexical_weight: the validation pairs need at least two answers")
    q_emb = model.encode_questions(task.questions, batch_size)
    a_emb = model.encode_answers(task.candidates, batch_size)
    flags = flag_column(model, a_emb)
    lexical, own = lexical_scores(task.candidates, task.questions)
    mrr = {
        w: rank_metrics(fuse(q_emb @ a_emb.T, lexical, own, w, flags), task.relevant)["mrr@10"]
        for w in sorted(weights)
    }
    return max(mrr, key=lambda w: (mrr[w], -w)), mrr
