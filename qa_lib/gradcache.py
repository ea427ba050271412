"""Gradient caching (Gao et al., 2021): an in-batch-negative batch larger than memory allows.

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

from qa_lib.losses import in_batch_loss

Embed = Callable[[dict], torch.Tensor]


class RngState:
    """The CPU and CUDA random state at one moment, so a forward pass can be replayed exactly."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def length_sorted_chunks(ids: Sequence[list[int]], size: int) -> list[list[int]]:
    """Row indices grouped into chunks of ``size``, shortest texts first (less padding)."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    return [order[s : s + size] for s in range(0, len(order), size)]


def _embed_without_grad(embed: Embed, ids, chunks, collate, device) -> tuple[torch.Tensor, list]:
    """Pass 1: embeddings of every chunk, no graph kept; the random state before each chunk."""
    parts, states = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(RngState(device))
            parts.append(embed(collate([ids[i] for i in chunk])).float())
    out = torch.empty(len(ids), parts[0].shape[-1], device=parts[0].device)
    for chunk, part in zip(chunks, parts):
        out[torch.tensor(chunk, device=out.device)] = part
    return out.requires_grad_(), states


def _replay_with_grad(embed: Embed, ids, chunks, states, grad, collate) -> None:
    """Pass 3: re-embed each chunk with the same random state and backpropagate its cached grad."""
    for chunk, state in zip(chunks, states):
        state.restore()
        emb = embed(collate([ids[i] for i in chunk])).float()
        emb.backward(grad[torch.tensor(chunk, device=grad.device)])


def cached_loss_backward(
    embeds: Sequence[Embed],
    ids: Sequence[Sequence[list[int]]],
    loss_fn: Callable[..., torch.Tensor],
    chunk_size: int,
    collate: Callable[[Sequence[list[int]]], dict],
    device: torch.device,
) -> torch.Tensor:
    """Compute ``loss_fn(*embeddings)`` and its parameter gradients, one chunk of rows at a time.

    Args:
        embeds: one embedding function per input (e.g. question tower, answer tower).
        ids: token ids for each input, aligned with ``embeds``.
        loss_fn: maps the full embedding matrices (in the order of ``embeds``) to a scalar loss.
        chunk_size: rows per forward pass; peak activation memory is that of one chunk.
        collate: pads a list of token-id lists into a model batch.
        device: where random state is recorded for replaying dropout.

    Returns:
        The loss (detached). Parameter ``.grad`` fields hold its gradient.
    """
    plans = [length_sorted_chunks(x, chunk_size) for x in ids]
    reps, states = zip(
        *(_embed_without_grad(e, x, c, collate, device) for e, x, c in zip(embeds, ids, plans))
    )
    after = RngState(device)
    loss = loss_fn(*reps)
    loss.backward()
    for embed, x, chunks, st, rep in zip(embeds, ids, plans, states, reps):
        _replay_with_grad(embed, x, chunks, st, rep.grad, collate)
    after.restore()  # continue the random stream as if each chunk had run once
    return loss.detach()


def cached_train_step(model, data, idx: list[int], config) -> torch.Tensor:
    """One training step of :func:`qa_lib.train.fit` with gradient caching.

    Same loss and gradients as the plain step (hard negatives included); activation memory of
    ``config.grad_cache_chunk`` pairs instead of ``config.batch_size``.
    """
    from qa_lib.encoders import _autocast
    from qa_lib.train import answer_rows, collate, echo_weight

    q_ids = [data.q_ids[i] for i in idx]
    rows = answer_rows(data, idx)  # the batch's answers, then any hard negatives
    embeds, ids = (
        [model.embed_questions, model.embed_answers],
        [q_ids, [data.a_ids[i] for i in rows]],
    )
    weight = echo_weight(model, config)
    if weight > 0:
        embeds.append(model.embed_echoes)
        ids.append(q_ids)
    answer_ids = data.answer_ids[rows].to(model.device)

    def loss_fn(q_emb, a_emb, echo_emb=None):
        return in_batch_loss(
            q_emb,
            a_emb,
            config.scale,
            config.symmetric,
            answer_ids,
            echo_emb,
            weight,
            model.has_prior,
        )

    def autocast_embed(embed):
        def run(batch):
            with _autocast(model.device, config.precision):
                return embed(batch)

        return run

    return cached_loss_backward(
        [autocast_embed(e) for e in embeds],
        ids,
        loss_fn,
        config.grad_cache_chunk,
        lambda x: collate(x, data.pad_id),
        model.device,
    )
