"""BM25 with ``bm25s`` (notebook 05): the lexical baseline, hard negatives, hybrid search.

Taught in section 8 of notebook 05 (adding BM25); used by :mod:`qa_lib.negatives` and
:mod:`qa_lib.hybrid`, and by the benchmarks as the baseline every dense model is compared with.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch


def bm25_index(documents: Sequence[str], k1: float = 0.9, b: float = 0.4):
    """Index documents with ``bm25s`` (lower-cased words, English stop words removed).

    Args:
        documents: the texts to rank.
        k1: term-frequency saturation.
        b: length normalisation.

    Returns:
        A ``bm25s.BM25`` retriever over ``documents``, in their order.
    """
    import bm25s

    # bm25s sets its logger to DEBUG on import: under a logging handler (the CLI's) every index
    # printed a line; its warnings still show
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(
        bm25s.tokenize(list(documents), stopwords="en", show_progress=False), show_progress=False
    )
    return retriever


def bm25_scores(retriever, queries: Sequence[str]) -> np.ndarray:
    """BM25 score of every query against every indexed document.

    Returns:
        Scores. Shape (len(queries), n_documents).
    """
    import bm25s

    tokens = bm25s.tokenize(list(queries), stopwords="en", return_ids=False, show_progress=False)
    n_docs = int(retriever.scores["num_docs"])
    rows = [retriever.get_scores(t) if t else np.zeros(n_docs, dtype=np.float32) for t in tokens]
    return np.stack(rows) if rows else np.zeros((0, n_docs), dtype=np.float32)


def lexical_scores(
    candidates: Sequence[str], questions: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """BM25 of every question against every candidate and
    against its own text.

    A question's own text is scored by adding it to the pool as one more document. Questions
    join the pool a few at a time (at most 2% of it), so the pool's statistics (idf, mean
    length) barely change; indexing every question at once would change them a lot. The pool's
    scores come from the same indexes, so the two are comparable.

    Args:
        candidates: the pool.
        questions: the queries.

    Returns:
        (scores, self scores). Shapes (len(questions), len(candidates)), (len(questions),).
    """
    n, step = len(candidates), max(1, len(candidates) // 50)
    candidates, own, pool = list(candidates), [], []
    for s in range(0, len(questions), step):
        batch = list(questions[s : s + step])
        both = bm25_scores(bm25_index(candidates + batch), batch)  # (len(batch), n + len(batch))
        own.append(both[np.arange(len(batch)), n + np.arange(len(batch))])
        pool.append(both[:, :n])
    if not pool:
        return torch.zeros(0, n), torch.zeros(0)
    return torch.from_numpy(np.concatenate(pool)), torch.from_numpy(np.concatenate(own))
