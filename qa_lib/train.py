"""Train a dual encoder with the in-batch contrastive loss."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from qa_lib.config import TrainConfig
from qa_lib.data import Pairs
from qa_lib.encoders import DualEncoder, _autocast
from qa_lib.errors import QAError
from qa_lib.evaluate import evaluate
from qa_lib.losses import in_batch_loss

log = logging.getLogger(__name__)


@dataclass
class History:
    """What happened during :func:`fit`."""

    step_loss: list[float] = field(default_factory=list)  # training loss per optimiser step
    epochs: list[dict] = field(default_factory=list)  # per epoch: mean loss + validation metrics
    chance_loss: float = 0.0  # loss of a model that cannot tell answers apart: ln(candidates)
    best_epoch: int | None = None  # epoch with the best validation mrr@10 (1-based)

    def as_dict(self) -> dict:
        return {
            "step_loss": self.step_loss,
            "epochs": self.epochs,
            "chance_loss": self.chance_loss,
            "best_epoch": self.best_epoch,
        }


@dataclass
class TokenizedPairs:
    """Pairs tokenised once, unpadded; batches are padded on the fly."""

    q_ids: list[list[int]]
    a_ids: list[list[int]]
    answer_ids: torch.Tensor  # equal ids = equal answer text. Shape (n,)
    pad_id: int
    negatives: list[list[int]] | None = None  # per row: rows whose answers are hard negatives


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str | None) -> torch.device:
    """``device`` as given, else CUDA when available, else CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def tokenize_pairs(model: DualEncoder, pairs: Pairs) -> TokenizedPairs:
    """Tokenise every question and answer once (truncated, not padded)."""
    tok = model.tokenizer
    q_ids = tok(pairs.questions, truncation=True, max_length=model.config.max_q_len)["input_ids"]
    a_ids = tok(pairs.answers, truncation=True, max_length=model.config.max_a_len)["input_ids"]
    index: dict[str, int] = {}
    answer_ids = torch.tensor([index.setdefault(a, len(index)) for a in pairs.answers])
    return TokenizedPairs(q_ids, a_ids, answer_ids, tok.pad_token_id or 0)


def collate(ids: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad token-id lists to the longest one.

    Returns:
        ``input_ids`` and ``attention_mask``. Shape (len(ids), longest).
    """
    longest = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def embed_in_chunks(
    embed: Callable[[dict], torch.Tensor], ids: Sequence[list[int]], pad_id: int, chunks: int
) -> torch.Tensor:
    """Embed texts in length-sorted chunks so short texts are not padded to the longest.

    The result is the same as one padded batch (same rows, same order, same gradients);
    only the padding that is never attended to is skipped.

    Returns:
        Embeddings in input order. Shape (len(ids), dim).
    """
    if chunks <= 1 or len(ids) < 2 * chunks:
        return embed(collate(ids, pad_id))
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    size = -(-len(ids) // chunks)
    parts = [
        embed(collate([ids[i] for i in order[s : s + size]], pad_id))
        for s in range(0, len(order), size)
    ]
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(parts)[inverse.to(parts[0].device)]


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffle rows (seeded by seed and epoch) into batches; a last batch of one is dropped."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    batches = [order[s : s + batch_size] for s in range(0, n, batch_size)]
    return [b for b in batches if len(b) > 1]


def prepare_model(model: DualEncoder, config: TrainConfig) -> DualEncoder:
    """Move the model to its device in training mode; compile the towers if asked.

    ``Module.compile`` compiles in place, so parameter names (and saved files) do not change.
    """
    model.to(resolve_device(config.device)).train()
    if config.compile:
        for encoder in {id(m): m for m in (model.q_encoder, model.a_encoder)}.values():
            encoder.compile(dynamic=None)
    return model


def make_optimizer(model: DualEncoder, config: TrainConfig, total_steps: int):
    """AdamW (no decay on biases and LayerNorm) and a warm-up + linear-decay schedule."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = model.device.type == "cuda"
    optimizer = torch.optim.AdamW(groups, lr=config.lr, fused=fused)
    warmup = max(1, round(config.warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def answer_rows(data: TokenizedPairs, idx: list[int]) -> list[int]:
    """The batch's rows, then the rows of their hard negatives (if mined): the answer columns."""
    if not data.negatives:
        return list(idx)
    return list(idx) + [j for i in idx for j in data.negatives[i]]


def train_step(model: DualEncoder, data: TokenizedPairs, idx: list[int], config: TrainConfig):
    """Forward and backward for one batch; returns the loss (a tensor, not synced).

    With ``config.grad_cache_chunk`` smaller than the batch, the step runs with gradient
    caching (:mod:`qa_lib.gradcache`): same loss and gradients, the memory of one chunk.
    Hard negatives (``data.negatives``) add answer columns after the batch's own answers.
    """
    if config.grad_cache_chunk and config.grad_cache_chunk < len(idx):
        from qa_lib.gradcache import cached_train_step

        return cached_train_step(model, data, idx, config)
    q_ids = [data.q_ids[i] for i in idx]
    rows = answer_rows(data, idx)
    with _autocast(model.device):
        q_batch = collate(q_ids, data.pad_id)
        q_emb = model.embed_questions(q_batch)
        chunks = config.answer_chunks or (1 if model.device.type == "cuda" else 4)
        a_emb = embed_in_chunks(
            model.embed_answers, [data.a_ids[i] for i in rows], data.pad_id, chunks
        )
        echo_emb = model.embed_answers(q_batch) if config.echo_weight > 0 else None
        loss = in_batch_loss(
            q_emb,
            a_emb,
            config.scale,
            config.symmetric,
            data.answer_ids[rows].to(model.device),
            echo_emb,
            config.echo_weight,
        )
    loss.backward()
    return loss.detach()


def read_losses(pending: list[torch.Tensor], step: int) -> list[float]:
    """Read queued losses back in one host sync; stop on the first that is not finite.

    Args:
        pending: loss tensors of the steps up to ``step``, oldest first.
        step: the number of optimiser steps taken so far.

    Raises:
        QAError: a loss is NaN or infinite; the message names its step.
    """
    values = torch.stack(pending).float().tolist() if pending else []
    for offset, value in enumerate(values):
        if not math.isfinite(value):
            bad = step - len(values) + offset + 1
            raise QAError(
                f"the loss became {value} at step {bad}; lower --lr or the scale, or check the "
                f"data (the last good model is still in the output folder)"
            )
    return values


def fit(
    model: DualEncoder,
    train: Pairs,
    val: Pairs | None = None,
    config: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> History:
    """Train both towers with the in-batch contrastive loss.

    Args:
        model: the dual encoder (moved to ``config.device``).
        train: training pairs.
        val: validation pairs; Recall@1 and MRR@10 are measured on them after each epoch.
        config: optimisation settings; None = ``TrainConfig()``.
        out_dir: if given, ``out_dir/last`` (every epoch) and ``out_dir/best`` (best
            validation MRR@10, ties to the lower echo rate; without validation, the last
            epoch) are saved there.
        progress: show a tqdm bar with the running loss.

    Returns:
        The loss per step and the validation metrics per epoch.

    Raises:
        QAError: too few pairs for one batch, or the loss became NaN or infinite.
    """
    from tqdm.auto import tqdm

    config = config or TrainConfig()
    if len(train) < 2:
        raise QAError(f"{train.name or 'training data'}: need at least 2 pairs to train")
    seed_everything(config.seed)
    prepare_model(model, config)
    data = tokenize_pairs(model, train)
    if config.hard_negatives > 0:
        from qa_lib.negatives import mine_bm25_negatives

        data.negatives = mine_bm25_negatives(train, config.hard_negatives)
    per_epoch = len(epoch_batches(len(train), config.batch_size, config.seed, 0))
    total = per_epoch * config.num_epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    optimizer, scheduler = make_optimizer(model, config, total)
    batch = min(config.batch_size, len(train))
    echo = config.echo_weight if config.echo_weight > 0 else 0.0
    history = History(chance_loss=math.log(batch + echo))
    best: tuple[float, float, int] | None = None
    bar = tqdm(total=total, desc="train", disable=not progress, dynamic_ncols=True)
    sync_every = config.log_every or (10 if model.device.type == "cuda" else 1)
    step = 0
    for epoch in range(config.num_epochs):
        losses: list[float] = []
        pending: list[torch.Tensor] = []  # losses not yet read back (no host sync per step)
        for idx in epoch_batches(len(train), config.batch_size, config.seed, epoch):
            if step >= total:
                break
            pending.append(train_step(model, data, idx, config))
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if len(pending) >= sync_every or step >= total:
                losses += read_losses(pending, step)
                bar.update(len(pending))
                bar.set_postfix(
                    epoch=epoch + 1,
                    loss=f"{sum(losses[-20:]) / 20:.3f}"
                    if len(losses) >= 20
                    else f"{sum(losses) / len(losses):.3f}",
                )
                pending = []
        losses += read_losses(pending, step)
        bar.update(len(pending))
        history.step_loss.extend(losses)
        record = {"epoch": epoch + 1, "loss": sum(losses) / max(1, len(losses)), "steps": step}
        if val is not None and len(val):
            metrics = evaluate(model, val, config.eval_batch_size)
            record.update({k: metrics[k] for k in ("recall@1", "mrr@10", "question_echo_rate")})
        history.epochs.append(record)
        # best = highest validation MRR@10; ties go to the lower echo rate, then the later epoch
        score = (record.get("mrr@10", 0.0), -record.get("question_echo_rate", 0.0), epoch)
        improved = best is None or score > best
        if improved:
            best, history.best_epoch = score, epoch + 1
        if out_dir is not None:
            model.save(Path(out_dir) / "last")
            if improved:
                model.save(Path(out_dir) / "best")
        log.info("epoch %d: %s", epoch + 1, record)
        if step >= total:
            break
    bar.close()
    return history
