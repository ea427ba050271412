"""Retrieval metrics (notebook 05), computed in this one place: Recall@k, MRR@10, nDCG@10, echoes.

Taught in notebook 05 (each metric by hand, then from here). Anything that scores questions
against a pool (the dual encoder, BM25, a peer library) is measured by these functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

METRIC_KEYS = (
    "recall@1",
    "recall@5",
    "recall@10",
    "mrr@10",
    "ndcg@10",
    "mean_rank",
    "question_echo_rate",
    "recall@1_with_echo",
    "mixed_pool_rate",
    "answer_flag_rate",
)


@dataclass
class RetrievalTask:
    """Unique questions, a candidate pool, and which candidates answer each question."""

    questions: list[str]
    candidates: list[str]
    relevant: list[list[int]]  # candidate indices that answer question i

    @property
    def chance_recall_at_1(self) -> float:
        """Recall@1 of a random ranking."""
        n = len(self.candidates)
        return sum(len(r) for r in self.relevant) / (n * len(self.questions))


def build_task(pairs) -> RetrievalTask:
    """Group pairs (a :class:`qa_lib.data.Pairs`) by question and index their answers in the pool.

    The pool is ``pairs.corpus`` when the source defines one (BEIR), else the unique
    answers of the pairs. A question asked several times with different answers counts
    once, with every one of its answers relevant.
    """
    candidates = (
        list(pairs.corpus) if pairs.corpus is not None else list(dict.fromkeys(pairs.answers))
    )
    index = {text: i for i, text in enumerate(candidates)}
    relevant: dict[str, list[int]] = {}
    for q, a in zip(pairs.questions, pairs.answers):
        if a in index:
            rel = relevant.setdefault(q, [])
            if index[a] not in rel:
                rel.append(index[a])
    return RetrievalTask(list(relevant), candidates, list(relevant.values()))


def relevant_ranks(scores: torch.Tensor, relevant: Sequence[Sequence[int]]) -> list[list[int]]:
    """The 1-based rank of each relevant candidate; ties with others count against it.

    Args:
        scores: question-candidate scores. Shape (n_questions, n_candidates).
        relevant: candidate indices relevant to each question.

    Returns:
        For each question, the ranks of its relevant candidates.
    """
    out = []
    for row, rel in zip(scores, relevant):
        rel_t = torch.as_tensor(list(rel), dtype=torch.long)
        is_rel = torch.zeros_like(row, dtype=torch.bool)
        is_rel[rel_t] = True
        rel_scores = row[rel_t]
        above = (row[None, :] > rel_scores[:, None]).sum(1)
        tied = ((row[None, :] == rel_scores[:, None]) & ~is_rel[None, :]).sum(1)
        out.append((1 + above + tied).tolist())
    return out


def rank_metrics(
    scores: torch.Tensor, relevant: Sequence[Sequence[int]], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k (a relevant candidate in the top k), MRR@10, nDCG@10 and mean rank.

    Args:
        scores: question-candidate scores. Shape (n_questions, n_candidates).
        relevant: candidate indices relevant to each question.
        ks: cut-offs for recall.

    Returns:
        ``recall@k`` for each k, ``mrr@10``, ``ndcg@10`` (binary gains) and ``mean_rank``
        (of the best-ranked relevant candidate; 1 is perfect).
    """
    return metrics_from_ranks(relevant_ranks(scores, relevant), ks)


def metrics_from_ranks(ranks: Sequence[Sequence[int]], ks: Sequence[int] = (1, 5, 10)) -> dict:
    """The metrics of :func:`rank_metrics` from the ranks of each question's relevant candidates."""
    first = torch.tensor([min(r) for r in ranks], dtype=torch.float64)
    metrics = {f"recall@{k}": (first <= k).double().mean().item() for k in ks}
    metrics["mrr@10"] = torch.where(first <= 10, 1.0 / first, 0.0).mean().item()
    ndcg = []
    for r in ranks:
        dcg = sum(1 / math.log2(x + 1) for x in r if x <= 10)
        ideal = sum(1 / math.log2(k + 2) for k in range(min(len(r), 10)))
        ndcg.append(dcg / ideal)
    metrics["ndcg@10"] = sum(ndcg) / len(ndcg)
    metrics["mean_rank"] = first.mean().item()
    return metrics


def echo_outcomes(
    scores: torch.Tensor, echo_scores: torch.Tensor, relevant: Sequence[Sequence[int]]
) -> tuple[list[list[int]], torch.Tensor]:
    """Each question's relevant ranks, and whether its echo ties or beats its best answer.

    Args:
        scores: question-candidate scores. Shape (n_questions, n_candidates).
        echo_scores: each question's score against its own text (the echo). Shape (n_questions,).
        relevant: candidate indices relevant to each question.

    Returns:
        ``(ranks, echo_wins)``: the ranks of :func:`relevant_ranks`, and a bool per question.
    """
    ranks = relevant_ranks(scores, relevant)
    return ranks, beats(echo_scores, best_relevant(scores, relevant))


def best_relevant(scores: torch.Tensor, relevant: Sequence[Sequence[int]]) -> torch.Tensor:
    """Each question's best score among its relevant candidates. Shape (n_questions,)."""
    return torch.stack([row[list(r)].max() for row, r in zip(scores, relevant)])


def beats(intruder: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """Where an intruder (an echo, another question) ties or beats the best answer.

    Ties count against the model; a candidate a filter removed (score minus infinity) never wins.
    """
    return (intruder >= best) & (intruder > float("-inf"))


def summarize(ranks: Sequence[Sequence[int]], echo_wins: torch.Tensor) -> dict[str, float]:
    """The ranking and echo metrics from :func:`echo_outcomes`, the one place they are computed.

    ``question_echo_rate`` is the share of questions whose echo ties or beats their best answer;
    ``recall@1_with_echo`` the share whose correct answer still ranks first with the echo added
    to the pool (the original lesson's claim).
    """
    metrics = metrics_from_ranks(ranks)
    echo = torch.as_tensor(echo_wins, dtype=torch.bool)
    metrics["question_echo_rate"] = echo.double().mean().item()
    top1 = torch.tensor([min(r) == 1 for r in ranks])
    metrics["recall@1_with_echo"] = (top1 & ~echo).double().mean().item()
    return metrics


def metrics_from_scores(scores, echo_scores, relevant: Sequence[Sequence[int]]) -> dict:
    """The metrics of any scorer (BM25, a peer library) from its scores and echo scores.

    Args:
        scores: question-candidate scores. Shape (n_questions, n_candidates).
        echo_scores: each question's score against its own text. Shape (n_questions,).
        relevant: the relevant candidate indices of each question.
    """
    scores = torch.as_tensor(scores, dtype=torch.float32)
    echo_scores = torch.as_tensor(echo_scores, dtype=torch.float32)
    return summarize(*echo_outcomes(scores, echo_scores, relevant))
