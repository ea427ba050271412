"""TREC run and qrels files, so trec_eval-style tools can check qa_lib's rankings (notebook 05).

A run file has one line ``qid Q0 docid rank score tag`` per retrieved candidate, best first; a
qrels file one line ``qid 0 docid relevance`` per relevant candidate. Questions are ``q<i>`` and
candidates ``d<j>``: their indices in :func:`qa_lib.metrics.build_task`'s lists. Within a
question, equal scores are listed as trec_eval orders them (docid descending), so the rank
column is the rank trec_eval uses; qa_lib's own metrics count a tie against the relevant
candidate instead (:func:`qa_lib.metrics.relevant_ranks`), so with exact ties its numbers are a
lower bound of trec_eval's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from qa_lib.files import write_atomic

RUN_DEPTH = 100  # candidates per question in a run file: the TREC convention


def query_id(i: int) -> str:
    """The TREC id of question ``i``."""
    return f"q{i}"


def doc_id(j: int) -> str:
    """The TREC id of candidate ``j``."""
    return f"d{j}"


def top_candidates(scores: torch.Tensor, depth: int = RUN_DEPTH) -> list[list[tuple[int, float]]]:
    """Each question's ``depth`` best candidates in trec_eval's order.

    Args:
        scores: question-candidate scores. Shape (n_questions, n_candidates).
        depth: candidates kept per question.

    Returns:
        Per question, ``(candidate index, score)`` pairs: score descending, equal scores by docid
        descending. Candidates scored minus infinity (removed by a filter) are left out.
    """
    k = min(depth, scores.shape[1])
    values, indices = scores.float().topk(k, dim=1)
    out = []
    for row_values, row_indices in zip(values.tolist(), indices.tolist()):
        kept = [(j, s) for j, s in zip(row_indices, row_values) if s > float("-inf")]
        kept.sort(key=lambda js: doc_id(js[0]), reverse=True)
        kept.sort(key=lambda js: js[1], reverse=True)  # stable: ties keep docid descending
        out.append(kept)
    return out


def run_lines(ranking: Sequence[Sequence[tuple[int, float]]], tag: str = "qa_lib") -> list[str]:
    """The run file's lines, ``qid Q0 docid rank score tag``, for :func:`top_candidates`."""
    return [
        f"{query_id(i)} Q0 {doc_id(j)} {rank} {score:.9g} {tag}"
        for i, row in enumerate(ranking)
        for rank, (j, score) in enumerate(row, start=1)
    ]


def qrels_lines(relevant: Sequence[Sequence[int]]) -> list[str]:
    """The qrels file's lines, ``qid 0 docid 1``, one per relevant candidate."""
    return [f"{query_id(i)} 0 {doc_id(j)} 1" for i, rel in enumerate(relevant) for j in rel]


def write_run(
    path: str | os.PathLike, ranking: Sequence[Sequence[tuple[int, float]]], tag: str = "qa_lib"
) -> Path:
    """Atomically write a TREC run file (see :func:`run_lines`)."""
    return write_atomic(path, "".join(line + "\n" for line in run_lines(ranking, tag)).encode())


def write_qrels(path: str | os.PathLike, relevant: Sequence[Sequence[int]]) -> Path:
    """Atomically write a TREC qrels file (see :func:`qrels_lines`)."""
    return write_atomic(path, "".join(line + "\n" for line in qrels_lines(relevant)).encode())
