"""Held-out retrieval metrics: rank every question's candidates and score the ranking."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from qa_lib.config import DEMO_ANSWER, DEMO_DISTRACTOR, DEMO_QUESTION
from qa_lib.data import Pairs

METRIC_KEYS = (
    "recall@1",
    "recall@5",
    "recall@10",
    "mrr@10",
    "ndcg@10",
    "mean_rank",
    "question_echo_rate",
    "recall@1_with_echo",
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


def build_task(pairs: Pairs) -> RetrievalTask:
    """Group pairs by question and index their answers in the candidate pool.

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


def evaluate(
    model,
    pairs: Pairs,
    batch_size: int = 64,
    progress: bool = False,
    lexical_weight: float = 0.0,
) -> dict[str, float]:
    """Rank each held-out question's candidates and report the metrics in ``METRIC_KEYS``.

    Args:
        model: a :class:`~qa_lib.encoders.DualEncoder`.
        pairs: the held-out pairs (their unique answers, or their corpus, are the pool).
        batch_size: texts per forward pass.
        progress: show progress bars.
        lexical_weight: above 0, rank with :mod:`qa_lib.hybrid`'s score, the dense score plus
            this weight times the share of the question's own BM25 score a candidate reaches.

    Returns:
        The metrics in ``METRIC_KEYS`` (``recall@1_with_echo``: the correct answer ranks first
        even with the question's own text added to the pool, the original lesson's claim),
        plus ``n_questions``, ``n_candidates`` and ``chance_recall@1``.
    """
    from qa_lib.hybrid import fuse, lexical_scores, prior_flags

    task = build_task(pairs)
    q_emb = model.encode_questions(task.questions, batch_size, progress)
    a_emb = model.encode_answers(task.candidates, batch_size, progress)
    echo_emb = model.encode_answers(task.questions, batch_size, progress)
    flags, echo_flags = prior_flags(model, a_emb), prior_flags(model, echo_emb)
    ranks: list[list[int]] = []
    echo = torch.empty(len(task.questions), dtype=torch.bool)
    for start in range(0, len(task.questions), 1024):  # bounded memory for large pools
        end = min(start + 1024, len(task.questions))
        scores = q_emb[start:end] @ a_emb.T  # (chunk, n_candidates)
        echo_score = (q_emb[start:end] * echo_emb[start:end]).sum(-1)  # (chunk,)
        rel = task.relevant[start:end]
        if lexical_weight:  # the echo's lexical share is 1 (all its words) unless it is flagged
            lexical, own = lexical_scores(task.candidates, task.questions[start:end])
            scores = fuse(scores, lexical, own, lexical_weight, flags)
            own_flags = None if echo_flags is None else echo_flags[start:end, None]
            echo_score = fuse(echo_score[:, None], own[:, None], own, lexical_weight, own_flags)
            echo_score = echo_score[:, 0]
        ranks.extend(relevant_ranks(scores, rel))
        best = torch.stack([row[list(r)].max() for row, r in zip(scores, rel)])
        echo[start:end] = echo_score >= best
    metrics = metrics_from_ranks(ranks)
    metrics["question_echo_rate"] = echo.double().mean().item()
    top1 = torch.tensor([min(r) == 1 for r in ranks])
    metrics["recall@1_with_echo"] = (top1 & ~echo).double().mean().item()
    metrics.update(
        n_questions=len(task.questions),
        n_candidates=len(task.candidates),
        **{"chance_recall@1": task.chance_recall_at_1},
    )
    return metrics


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
