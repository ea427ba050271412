"""Evaluate a dual encoder on held-out pairs, and the original lesson's demo (notebook 05).

The metrics themselves live in :mod:`qa_lib.metrics`; this module encodes the questions, the
candidate pool and the echoes, ranks them (optionally with BM25 fused in), and summarises.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qa_lib.bm25 import lexical_scores
from qa_lib.config import DEMO_ANSWER, DEMO_DISTRACTOR, DEMO_QUESTION
from qa_lib.data import Pairs
from qa_lib.hybrid import fuse
from qa_lib.metrics import build_task, echo_outcomes, summarize
from qa_lib.question_flag import flagged

EVAL_CHUNK = 1024  # questions scored at once: bounded memory for large pools


def evaluate(
    model,
    pairs: Pairs,
    batch_size: int = 64,
    progress: bool = False,
    lexical_weight: float = 0.0,
) -> dict[str, float]:
    """Rank each held-out question's candidates and report the metrics in ``METRIC_KEYS``.

    Args:
        model: a :class:`~qa_lib.encoders.DualEncoder`, or anything with ``encode_questions``
            and ``encode_answers`` (a sentence-transformers adapter, a stand-in).
        pairs: the held-out pairs (their unique answers, or their corpus, are the pool).
        batch_size: texts per forward pass.
        progress: show progress bars.
        lexical_weight: above 0, rank with :mod:`qa_lib.hybrid`'s score, the dense score plus
            this weight times the share of the question's own BM25 score a candidate reaches.

    Returns:
        The metrics in ``METRIC_KEYS`` (see :func:`summarize`), plus ``n_questions``,
        ``n_candidates`` and ``chance_recall@1``.
    """
    task = build_task(pairs)
    q_emb = model.encode_questions(task.questions, batch_size, progress)
    a_emb = model.encode_answers(task.candidates, batch_size, progress)
    echo_emb = model.encode_answers(task.questions, batch_size, progress)
    flags, echo_flags = flagged(model, a_emb), flagged(model, echo_emb)
    ranks, echo = [], []
    for start in range(0, len(task.questions), EVAL_CHUNK):  # bounded memory for large pools
        rows = slice(start, start + EVAL_CHUNK)
        scores = q_emb[rows] @ a_emb.T  # (chunk, n_candidates)
        echo_score = (q_emb[rows] * echo_emb[rows]).sum(-1)  # (chunk,)
        if lexical_weight:
            scores, echo_score = _with_lexical(
                task, rows, scores, echo_score, flags, echo_flags, lexical_weight
            )
        chunk_ranks, chunk_echo = echo_outcomes(scores, echo_score, task.relevant[rows])
        ranks.extend(chunk_ranks)
        echo.append(chunk_echo)
    metrics = summarize(ranks, torch.cat(echo))
    metrics.update(
        n_questions=len(task.questions),
        n_candidates=len(task.candidates),
        **{"chance_recall@1": task.chance_recall_at_1},
    )
    return metrics


def _with_lexical(task, rows: slice, scores, echo_score, flags, echo_flags, weight: float):
    """One chunk's hybrid scores (:func:`qa_lib.hybrid.fuse`), the echo's included.

    The echo's lexical share is 1 (all its words) unless the question flag marks it.
    """
    lexical, own = lexical_scores(task.candidates, task.questions[rows])
    scores = fuse(scores, lexical, own, weight, flags)
    own_flags = None if echo_flags is None else echo_flags[rows, None]
    return scores, fuse(echo_score[:, None], own[:, None], own, weight, own_flags)[:, 0]


def demo_scores(
    model,
    question: str = DEMO_QUESTION,
    candidates: Sequence[str] = (DEMO_QUESTION, DEMO_ANSWER, DEMO_DISTRACTOR),
) -> list[tuple[str, float]]:
    """The original lesson's demo: score the question against a few candidates.

    Args:
        model: a dual encoder.
        question: the question.
        candidates: by default the question itself, the correct answer and an unrelated question.

    Returns:
        (candidate, score) pairs, best first.
    """
    scores = model.score([question], list(candidates))[0]
    return sorted(zip(candidates, scores.tolist()), key=lambda x: -x[1])
