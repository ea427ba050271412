"""One training step (notebook 04): embed a batch with both towers, assemble the loss, backprop.

Two ways to run the same step, picked by one line in :func:`train_step` (as Tevatron picks its
``GCTrainer if grad_cache else Trainer``): :func:`plain_step` embeds the whole batch at once;
:func:`cached_step` embeds it chunk by chunk with gradient caching (:mod:`qa_lib.gradcache`).
Both call :func:`batch_loss`, so their loss and gradients are the same.

Under torchrun (:mod:`qa_lib.distributed`) each process embeds its share of the global batch,
:func:`gather_batch` all-gathers the embeddings with gradients, every process computes the global
batch's loss, and :func:`train_step` averages the gradients over the processes.
"""

from __future__ import annotations

import math

import torch

from qa_lib.batching import TokenizedPairs, candidate_rows, collate, embed_in_chunks
from qa_lib.config import TrainConfig
from qa_lib.distributed import World, average_gradients, current_world, gather_rows, shard
from qa_lib.gradcache import cached_loss_backward
from qa_lib.losses import in_batch_loss
from qa_lib.question_flag import flag_loss
from qa_lib.runtime import autocast


def echo_weights(model, config: TrainConfig) -> tuple[float, float]:
    """``(flag loss weight, echo negative weight)`` as they apply to this model.

    The flag's loss needs a model with the question flag. The echo negative is off for tied
    towers: a tied encoder reads the echo exactly as it reads the question, so the echo scores
    the question's own norm (cosine 1.0), a constant no training can lower; as a negative it would
    only sit at the top of every row of the softmax (MedQuAD, 3 seeds: tied towers reached
    Recall@1 0.557 with it, 0.835 without).
    """
    flag = max(config.flag_loss_weight, 0.0) if model.has_question_flag else 0.0
    echo = 0.0 if model.config.tied else max(config.echo_negative_weight, 0.0)
    return flag, echo


def chance_loss(batch: int, config: TrainConfig, model) -> float:
    """The loss of a model that tells nothing apart.

    ``ln`` of the candidates per question (the batch's answers, plus the echo negative when it
    counts as ``w`` negatives), plus ``flag weight * ln 2`` for an undecided question flag.
    """
    flag, echo = echo_weights(model, config)
    return math.log(batch + echo) + flag * math.log(2)


def batch_loss(
    model,
    config: TrainConfig,
    q_emb: torch.Tensor,
    a_emb: torch.Tensor,
    answer_keys: torch.Tensor,
    echo_emb: torch.Tensor | None = None,
    detector: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The step's loss: the in-batch loss, plus the question flag's loss on the echoes.

    Args:
        model: the dual encoder that made the embeddings.
        config: ``scale``, ``symmetric`` and the two echo weights.
        q_emb: question embeddings. Shape (batch, dim).
        a_emb: candidate embeddings, the batch's answers first. Shape (n_candidates, dim).
        answer_keys: equal keys mark equal answer texts. Shape (n_candidates,).
        echo_emb: the questions read by the answer tower, for the echo negative (the towers
            learn from it), or None. Shape (batch, dim).
        detector: the flag column of the texts only the detector learns from, and which of
            them are questions (:func:`detector_columns`: echoes, form views), or None.
            Shapes (n,), (n,).

    Returns:
        A scalar. With the question flag its column is split off: the in-batch loss sees the
        towers' part, the flag's loss sees the column (answers vs echoes).
    """
    flag_w, echo_w = echo_weights(model, config)
    if not model.has_question_flag:
        return in_batch_loss(
            q_emb, a_emb, config.scale, config.symmetric, answer_keys, echo_emb, echo_w
        )
    towers_echo = None if echo_emb is None else echo_emb[:, :-1]
    loss = in_batch_loss(
        q_emb[:, :-1],
        a_emb[:, :-1],
        config.scale,
        config.symmetric,
        answer_keys,
        towers_echo,
        echo_w,
    )
    if flag_w <= 0 or (echo_emb is None and detector is None):
        return loss
    answers = a_emb[:, -1]
    questions = a_emb[:0, -1] if echo_emb is None else echo_emb[:, -1]
    if detector is not None:
        column, is_question = detector
        answers = torch.cat([answers, column[~is_question]])
        questions = torch.cat([questions, column[is_question]])
    return loss + flag_w * flag_loss(answers, questions)


def detector_texts(model, data: TokenizedPairs, idx: list[int], config: TrainConfig):
    """The texts only the detector learns from, and which of them are questions.

    Those are the batch's echoes (unless the echo negative embeds them with gradients) and its
    form views (``config.flag_views``).

    Returns:
        ``(tokens, labels)``: token ids per text and a bool per text; empty without the flag's loss.
    """
    flag_w, echo_w = echo_weights(model, config)
    if flag_w <= 0:
        return [], []
    rows = [] if echo_w > 0 else list(idx)  # the echo negative's echoes carry their own column
    tokens, labels = [data.q_tokens[i] for i in rows], [True] * len(rows)
    if config.flag_views and data.views is not None:
        tokens += [data.views[i] for i in idx]
        labels += data.view_is_question[idx].tolist()
    return tokens, labels


def detector_columns(model, data: TokenizedPairs, idx: list[int], config: TrainConfig):
    """The flag column of :func:`detector_texts`, read by :meth:`DualEncoder.flag_columns` (the
    answer tower up to the flag's layer, without gradients or dropout) in length-sorted chunks.

    Returns:
        ``(column, is_question)``, shapes (n,), (n,); None when there are no such texts.
    """
    tokens, labels = detector_texts(model, data, idx, config)
    if not tokens:
        return None
    column = embed_in_chunks(model.flag_columns, tokens, data.pad_id, chunk_count(model, config))
    return column, torch.tensor(labels, dtype=torch.bool, device=column.device)


def chunk_count(model, config: TrainConfig) -> int:
    """Length-sorted chunks per batch of texts: ``config.answer_chunks``, else 4 on CPU (less
    padding) and 1 on CUDA (fewer launches)."""
    return config.answer_chunks or (1 if model.device.type == "cuda" else 4)


def gather_batch(model, data, idx: list[int], config, world: World, embedded: tuple) -> tuple:
    """The global batch's embeddings from every process's share (the identity in one process).

    Each process embedded ``shard(idx)``: its questions, their answers and then their hard
    negatives (``a_emb``), echoes, and the detector's texts. The result is ordered as one process
    would have embedded the whole batch: the questions, the batch's answers, then all hard
    negatives; the detector's columns share by share, with their labels. Gradients flow back to
    each process's own rows.

    Args:
        embedded: ``(q_emb, a_emb, echo_emb, detector)`` of this process's share.
    """
    q_emb, a_emb, echo_emb, detector = embedded
    if world.size == 1:
        return embedded
    shares = [shard(idx, world, rank) for rank in range(world.size)]
    sizes = [len(s) for s in shares]
    negatives = [len(candidate_rows(data, s)) - len(s) for s in shares]
    own = sizes[world.rank]
    q_emb = gather_rows(q_emb, sizes)
    answers = [gather_rows(a_emb[:own], sizes)]
    if sum(negatives):
        answers.append(gather_rows(a_emb[own:], negatives))
    a_emb = torch.cat(answers)
    echo_emb = None if echo_emb is None else gather_rows(echo_emb, sizes)
    if detector is not None:
        labels = [detector_texts(model, data, s, config)[1] for s in shares]
        column = gather_rows(detector[0], [len(x) for x in labels])
        flat = [x for share in labels for x in share]
        detector = column, torch.tensor(flat, dtype=torch.bool, device=column.device)
    return q_emb, a_emb, echo_emb, detector


def plain_step(model, data: TokenizedPairs, idx: list[int], config: TrainConfig) -> torch.Tensor:
    """Forward and backward for one batch at once; returns the loss (a tensor, not synced).

    Under torchrun this process embeds its share of ``idx`` and the loss is the global batch's.
    """
    echo_w = echo_weights(model, config)[1]
    world = current_world()
    mine = shard(idx, world)
    rows = candidate_rows(data, mine)
    with autocast(model.device, config.precision):
        q_batch = collate([data.q_tokens[i] for i in mine], data.pad_id)
        q_emb = model.embed_questions(q_batch)
        a_tokens = [data.a_tokens[i] for i in rows]
        a_emb = embed_in_chunks(
            model.embed_answers, a_tokens, data.pad_id, chunk_count(model, config)
        )
        echo_emb = model.embed_answers(q_batch) if echo_w > 0 else None
        detector = detector_columns(model, data, mine, config)
        embedded = gather_batch(model, data, idx, config, world, (q_emb, a_emb, echo_emb, detector))
        keys = data.answer_keys[candidate_rows(data, idx)].to(model.device)
        loss = batch_loss(model, config, *embedded[:2], keys, *embedded[2:])
    loss.backward()
    return loss.detach()


def cached_step(model, data: TokenizedPairs, idx: list[int], config: TrainConfig) -> torch.Tensor:
    """The same step with gradient caching: activation memory of ``config.grad_cache_chunk``
    pairs instead of the batch; the same loss and gradients (hard negatives included).

    Under torchrun this process embeds and replays its share of ``idx``; the loss is computed on
    the gathered embeddings, so the cached gradients hold every process's part.
    """
    echo_w = echo_weights(model, config)[1]
    world = current_world()
    mine = shard(idx, world)
    rows = candidate_rows(data, mine)
    q_tokens = [data.q_tokens[i] for i in mine]
    embeds = [model.embed_questions, model.embed_answers]
    tokens = [q_tokens, [data.a_tokens[i] for i in rows]]
    if echo_w > 0:  # the echo negative: the towers learn from the echoes
        embeds.append(model.embed_answers)
        tokens.append(q_tokens)
    keys = data.answer_keys[candidate_rows(data, idx)].to(model.device)
    with autocast(model.device, config.precision):
        detector = detector_columns(model, data, mine, config)  # no tower gradients: no chunks

    def loss_fn(q_emb, a_emb, echo_emb=None):
        embedded = (q_emb, a_emb, echo_emb, detector)
        embedded = gather_batch(model, data, idx, config, world, embedded)
        return batch_loss(model, config, *embedded[:2], keys, *embedded[2:])

    def with_autocast(embed):
        def run(batch):
            with autocast(model.device, config.precision):
                return embed(batch)

        return run

    return cached_loss_backward(
        [with_autocast(e) for e in embeds],
        tokens,
        loss_fn,
        config.grad_cache_chunk,
        lambda x: collate(x, data.pad_id),
    )


def train_step(model, data: TokenizedPairs, idx: list[int], config: TrainConfig) -> torch.Tensor:
    """Forward and backward for one batch (rows ``idx`` of ``data``); returns the loss.

    Hard negatives (``data.negatives``) add answer columns after the batch's own answers. With
    ``config.grad_cache_chunk`` smaller than the batch, the step runs with gradient caching.
    Under torchrun ``idx`` is the global batch; the gradients are then averaged over the
    processes, so every process holds the single-process gradient of the global batch.
    """
    cached = config.grad_cache_chunk and config.grad_cache_chunk < len(shard(idx, current_world()))
    loss = (cached_step if cached else plain_step)(model, data, idx, config)
    average_gradients(model.parameters(), current_world())
    return loss
