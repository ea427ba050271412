"""Gradient caching (Gao et al., 2021): in-batch negatives beyond memory (notebook 04, exercises).

The loss over a batch of ``B`` pairs needs all ``B`` question and answer embeddings at once, but
not all ``B`` activation graphs. So:

1. embed the batch chunk by chunk **without** gradients, keeping only the embeddings;
2. compute the loss on those embeddings and backpropagate into them (cheap: ``B x dim``);
3. re-embed each chunk **with** gradients and push the cached embedding gradient through it.

Parameters receive exactly the gradient of the full-batch loss, while activation memory is that of
one chunk. Gradient *accumulation* is different: it sums the losses of small batches, and each small
batch only has its own few negatives. Caching keeps every negative of the large batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from qa_lib.batching import sorted_chunks
from qa_lib.runtime import capture_rng, restore_rng

Embed = Callable[[dict], torch.Tensor]


def _embed_without_grad(embed: Embed, ids, chunks, collate) -> tuple[torch.Tensor, list]:
    """Pass 1: embeddings of every chunk, no graph kept; the random state before each chunk."""
    parts, states = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(capture_rng())
            parts.append(embed(collate([ids[i] for i in chunk])).float())
    out = torch.empty(len(ids), parts[0].shape[-1], device=parts[0].device)
    for chunk, part in zip(chunks, parts):
        out[torch.tensor(chunk, device=out.device)] = part
    return out.requires_grad_(), states


def _replay_with_grad(embed: Embed, ids, chunks, states, grad, collate) -> None:
    """Pass 3: re-embed each chunk with the same random state and backpropagate its cached grad."""
    for chunk, state in zip(chunks, states):
        restore_rng(state)
        emb = embed(collate([ids[i] for i in chunk])).float()
        emb.backward(grad[torch.tensor(chunk, device=grad.device)])


def cached_loss_backward(
    embeds: Sequence[Embed],
    ids: Sequence[Sequence[list[int]]],
    loss_fn: Callable[..., torch.Tensor],
    chunk_size: int,
    collate: Callable[[Sequence[list[int]]], dict],
) -> torch.Tensor:
    """Compute ``loss_fn(*embeddings)`` and its parameter gradients, one chunk of rows at a time.

    Args:
        embeds: one embedding function per input (e.g. question tower, answer tower).
        ids: token ids for each input, aligned with ``embeds``.
        loss_fn: maps the full embedding matrices (in the order of ``embeds``) to a scalar loss.
        chunk_size: rows per forward pass; peak activation memory is that of one chunk.
        collate: pads a list of token-id lists into a model batch.

    Returns:
        The loss (detached). Parameter ``.grad`` fields hold its gradient.
    """
    plans = [sorted_chunks([len(t) for t in x], chunk_size) for x in ids]
    reps, states = zip(
        *(_embed_without_grad(e, x, c, collate) for e, x, c in zip(embeds, ids, plans))
    )
    after = capture_rng()
    loss = loss_fn(*reps)
    loss.backward()
    for embed, x, chunks, st, rep in zip(embeds, ids, plans, states, reps):
        _replay_with_grad(embed, x, chunks, st, rep.grad, collate)
    restore_rng(after)  # continue the random stream as if each chunk had run once
    return loss.detach()
