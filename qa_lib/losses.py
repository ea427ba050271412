"""The in-batch contrastive (InfoNCE) loss (notebook 03): each question's answer against the rest.

Notebook 03 writes it by hand first and checks it against this function.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def duplicate_mask(answer_keys: torch.Tensor, n_questions: int) -> torch.Tensor:
    """Mark the off-diagonal candidates that are the same answer as the row's own.

    Args:
        answer_keys: a key per candidate; equal keys mean equal answer texts.
            Shape (n_candidates,).
        n_questions: rows; row ``i``'s own answer is candidate ``i``.

    Returns:
        True where a candidate would be a false negative. Shape (n_questions, n_candidates).
    """
    same = answer_keys[:n_questions, None] == answer_keys[None, :]
    own = torch.zeros_like(same)
    own[:, :n_questions] = torch.eye(n_questions, dtype=torch.bool, device=same.device)
    return same & ~own


def in_batch_loss(
    q_emb: torch.Tensor,
    a_emb: torch.Tensor,
    scale: float = 20.0,
    symmetric: bool = False,
    answer_keys: torch.Tensor | None = None,
    echo_emb: torch.Tensor | None = None,
    echo_weight: float = 1.0,
) -> torch.Tensor:
    """Cross-entropy over scaled dot products, the correct answer on the diagonal.

    Row ``i`` scores question ``i`` against every answer in the batch; the target is
    answer ``i``. Answers after the first ``batch`` rows (hard negatives) only add columns.

    Args:
        q_emb: question embeddings. Shape (batch, dim).
        a_emb: answer embeddings; row ``i`` answers question ``i``. Shape (batch + extra, dim).
        scale: inverse temperature multiplying the scores.
        symmetric: also average the answer-to-question direction.
        answer_keys: equal keys mark equal answers, masked so they are not negatives.
            Shape (batch + extra,).
        echo_emb: each question encoded by the answer tower, added as one extra negative per
            row (the *echo negative*), so the towers learn to rank the correct answer above the
            question's own text. Shape (batch, dim).
        echo_weight: how many negatives the echo counts as (its logit gets ``+ ln echo_weight``);
            0 ignores ``echo_emb``.

    Returns:
        The mean loss, a scalar. Chance level with ``B`` candidates is ``ln B`` (``ln(B + w)``
        with an echo negative of weight ``w``).
    """
    batch = q_emb.shape[0]
    scores = scale * (q_emb @ a_emb.T)  # (batch, batch + extra)
    if answer_keys is not None:
        scores = scores.masked_fill(duplicate_mask(answer_keys, batch), float("-inf"))
    logits = scores
    if echo_emb is not None and echo_weight > 0:
        echo = scale * (q_emb * echo_emb).sum(-1, keepdim=True)  # (batch, 1)
        logits = torch.cat([scores, echo + math.log(echo_weight)], dim=1)
    labels = torch.arange(batch, device=q_emb.device)
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        loss = (loss + F.cross_entropy(scores[:, :batch].T, labels)) / 2
    return loss
