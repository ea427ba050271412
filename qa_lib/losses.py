"""The in-batch contrastive (InfoNCE) loss: each question's own answer against all the others."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def duplicate_mask(answer_ids: torch.Tensor, n_questions: int) -> torch.Tensor:
    """Mark the off-diagonal candidates that are the same answer as the row's own.

    Args:
        answer_ids: an id per candidate; equal ids mean equal answer texts. Shape (n_candidates,).
        n_questions: rows; row ``i``'s own answer is candidate ``i``.

    Returns:
        True where a candidate would be a false negative. Shape (n_questions, n_candidates).
    """
    same = answer_ids[:n_questions, None] == answer_ids[None, :]
    own = torch.zeros_like(same)
    own[:, :n_questions] = torch.eye(n_questions, dtype=torch.bool, device=same.device)
    return same & ~own


def in_batch_loss(
    q_emb: torch.Tensor,
    a_emb: torch.Tensor,
    scale: float = 20.0,
    symmetric: bool = False,
    answer_ids: torch.Tensor | None = None,
    echo_emb: torch.Tensor | None = None,
    echo_weight: float = 1.0,
    answer_prior: bool = False,
) -> torch.Tensor:
    """Cross-entropy over scaled dot products, the correct answer on the diagonal.

    Row ``i`` scores question ``i`` against every answer in the batch; the target is
    answer ``i``. Answers after the first ``batch`` rows (hard negatives) only add columns.

    Args:
        q_emb: question embeddings. Shape (batch, dim).
        a_emb: answer embeddings; row ``i`` answers question ``i``. Shape (batch + extra, dim).
        scale: inverse temperature multiplying the scores.
        symmetric: also average the answer-to-question direction.
        answer_ids: equal ids mark equal answers, masked so they are not negatives.
            Shape (batch + extra,).
        echo_emb: each question encoded by the answer tower; added as one extra negative per
            row, so the model learns to rank the correct answer above the question's own text.
            Shape (batch, dim).
        echo_weight: how many negatives the echo counts as (its logit gets ``+ ln echo_weight``);
            with ``answer_prior``, the weight of :func:`prior_loss` instead.
        answer_prior: the last column of the answer and echo embeddings is the answer prior
            (:class:`qa_lib.DualEncoder` with ``answer_prior``). The echoes then train the prior
            only, through :func:`prior_loss`; the in-batch loss sees the prior as a constant.

    Returns:
        The mean loss, a scalar. Chance level with ``B`` candidates is ``ln B`` (plus
        ``echo_weight * ln 2`` with the answer prior).
    """
    if answer_prior:
        loss = in_batch_loss(q_emb[:, :-1], a_emb[:, :-1], scale, symmetric, answer_ids)
        if echo_emb is None or echo_weight <= 0:
            return loss
        return loss + echo_weight * prior_loss(a_emb[:, -1], echo_emb[:, -1])
    batch = q_emb.shape[0]
    scores = scale * (q_emb @ a_emb.T)  # (batch, batch + extra)
    if answer_ids is not None:
        scores = scores.masked_fill(duplicate_mask(answer_ids, batch), float("-inf"))
    logits = scores
    if echo_emb is not None and echo_weight > 0:
        echo = scale * (q_emb * echo_emb).sum(-1, keepdim=True)  # (batch, 1)
        logits = torch.cat([scores, echo + math.log(echo_weight)], dim=1)
    labels = torch.arange(batch, device=q_emb.device)
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        loss = (loss + F.cross_entropy(scores[:, :batch].T, labels)) / 2
    return loss


def prior_loss(answer_prior: torch.Tensor, echo_prior: torch.Tensor) -> torch.Tensor:
    """Teach the answer prior's detector that answers are answers and echoed questions are not.

    The prior is ``-p`` with ``p`` the detector's probability that a text is a question; this is
    the binary cross-entropy of ``p`` (answers: 0, echoes: 1), the two sides weighted equally.

    Args:
        answer_prior: the prior of the batch's answers. Shape (n_answers,).
        echo_prior: the prior of the batch's questions read by the answer tower. Shape (batch,).

    Returns:
        A scalar; ``ln 2`` for a detector that cannot tell them apart (p = 0.5 everywhere).
    """
    tiny = 1e-7
    p_answer = (-answer_prior).clamp(tiny, 1 - tiny)
    p_echo = (-echo_prior).clamp(tiny, 1 - tiny)
    return -(torch.log1p(-p_answer).mean() + torch.log(p_echo).mean()) / 2
