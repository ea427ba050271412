"""BM25-mined hard negatives: wrong answers sharing many words with the question (notebook 04).

In-batch negatives are random answers, most of them easy to tell apart. A hard negative is an
answer that a lexical retriever (BM25, via the ``bm25s`` package) ranks high for a question but
that is not its answer; training against it teaches the towers what words alone cannot.

Mining must not turn correct answers into negatives (false negatives). Skipped are candidates with
the positive's text, answers of a question with the same text (the question has several answers),
and candidates scoring above ``max_ratio`` times the positive's own BM25 score (likely a near
copy of it, or an answer the data missed). Candidates sharing no word with the question (score 0)
are not hard, so a question whose own answer shares no word with it gets no hard negative.
"""

from __future__ import annotations

import numpy as np

from qa_lib.bm25 import bm25_index, bm25_scores
from qa_lib.data import Pairs
from qa_lib.errors import QAError


def _pick(row_scores: np.ndarray, limit: float, skip: set[int], k: int, depth: int) -> list[int]:
    """The first ``k`` of the top ``depth`` candidates scoring in (0, limit], not in ``skip``."""
    picked = []
    for cand in np.argsort(-row_scores, kind="stable")[:depth].tolist():
        if 0 < row_scores[cand] <= limit and cand not in skip:
            picked.append(cand)
            if len(picked) == k:
                break
    return picked


def mine_bm25_negatives(
    pairs: Pairs, k: int = 1, max_ratio: float = 0.95, depth: int = 50
) -> list[list[int]]:
    """For each pair, up to ``k`` rows whose answers BM25 ranks high for its question but are wrong.

    Args:
        pairs: training pairs; candidates are their unique answers.
        k: hard negatives per pair.
        max_ratio: skip candidates scoring above this fraction of the positive's BM25 score.
        depth: how many top-ranked candidates to consider per question.

    Returns:
        For each row of ``pairs``, up to ``k`` row indices (into ``pairs``) whose answers are
        hard negatives, best first. Fewer when not enough candidates pass the filters.

    Raises:
        QAError: ``k`` < 1 or no pairs.
    """
    if k < 1 or not len(pairs):
        raise QAError(f"mine_bm25_negatives: need k >= 1 and some pairs (k={k}, n={len(pairs)})")
    first_row: dict[str, int] = {}  # unique answer text -> first row holding it
    for row, answer in enumerate(pairs.answers):
        first_row.setdefault(answer, row)
    unique = list(first_row)
    index = {a: i for i, a in enumerate(unique)}
    answers_of_q: dict[str, set[int]] = {}  # question text -> its answers' candidate indices
    for question, answer in zip(pairs.questions, pairs.answers):
        answers_of_q.setdefault(question, set()).add(index[answer])
    scores = bm25_scores(bm25_index(unique), pairs.questions)  # (n_pairs, n_unique)
    out = []
    for row, row_scores in enumerate(scores):
        limit = max_ratio * float(row_scores[index[pairs.answers[row]]])
        skip = answers_of_q[pairs.questions[row]]
        out.append([first_row[unique[c]] for c in _pick(row_scores, limit, skip, k, depth)])
    return out
