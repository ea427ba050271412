"""Train a dual encoder with the in-batch contrastive loss."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from qa_lib.checkpoint import (
    capture_rng,
    clear_checkpoints,
    load_latest_checkpoint,
    restore_rng,
    save_checkpoint,
)
from qa_lib.config import TrainConfig
from qa_lib.data import Pairs
from qa_lib.encoders import DualEncoder, _autocast, recover_interrupted_saves, use_bf16
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
    resumed_from: int | None = None  # step of the checkpoint this run resumed from, if any

    def as_dict(self) -> dict:
        return {
            "step_loss": self.step_loss,
            "epochs": self.epochs,
            "chance_loss": self.chance_loss,
            "best_epoch": self.best_epoch,
            "resumed_from": self.resumed_from,
        }


@dataclass
class RunState:
    """Where a run stands: what a checkpoint holds besides weights, optimiser and RNG states."""

    step: int = 0  # optimiser steps done
    epoch: int = 0  # the current epoch (0-based)
    batch: int = 0  # batches of the current epoch done
    batches: list[list[int]] | None = None  # the current epoch's data order (row indices)
    losses: list[float] = field(default_factory=list)  # the current epoch's step losses
    best: tuple[float, float, int] | None = None  # best validation score so far (see fit)


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


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, groups: Sequence[str] | None = None
) -> list[list[int]]:
    """Shuffle rows (seeded by seed and epoch) into batches; a last batch of one is dropped.

    With ``groups`` (one label per row: an article, a topic), batches are topic-aware: the
    groups are shuffled, each group's rows stay together (in shuffled order), the batches are
    cut from that sequence and then shuffled. A batch then holds one or a few groups, so its
    in-batch negatives are answers on the same topic: the ones a search over that topic must
    tell apart, instead of random answers that are easy to reject.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    if groups is None:
        order = list(range(n))
        rng.shuffle(order)
    else:
        rows_of: dict[str, list[int]] = {}
        for row in range(n):
            rows_of.setdefault(groups[row], []).append(row)
        keys = list(rows_of)
        rng.shuffle(keys)
        order = []
        for key in keys:
            rows = rows_of[key]
            rng.shuffle(rows)
            order += rows
    batches = [order[s : s + batch_size] for s in range(0, n, batch_size)]
    if groups is not None:
        rng.shuffle(batches)
    return [b for b in batches if len(b) > 1]


def prepare_model(model: DualEncoder, config: TrainConfig) -> DualEncoder:
    """Move the model to its device in training mode; compile the towers if asked.

    ``Module.compile`` compiles in place, so parameter names (and saved files) do not change.
    The model then also encodes (validation, search) at ``config.precision``.
    """
    model.to(resolve_device(config.device)).train()
    model.precision = config.precision
    if config.compile:
        for encoder in {id(m): m for m in (model.q_encoder, model.a_encoder)}.values():
            encoder.compile(dynamic=None)
    return model


PRIOR_PREFIX = "a_prior."  # the answer prior's detector: its own learning rate and clipping


def make_optimizer(model: DualEncoder, config: TrainConfig, total_steps: int):
    """AdamW (no decay on biases and LayerNorm; the prior at ``prior_lr``); warm-up, then decay."""
    by_kind: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            prior = name.startswith(PRIOR_PREFIX)
            by_kind.setdefault((prior, param.ndim >= 2), []).append(param)
    groups = [
        {
            "params": params,
            "weight_decay": config.weight_decay if decay else 0.0,
            "lr": config.prior_lr if prior else config.lr,
        }
        for (prior, decay), params in sorted(by_kind.items())
    ]
    # fused AdamW: one kernel over all parameters (on a 2-core CPU 0.03 s a step, not 0.13 s)
    fused = model.device.type in ("cuda", "cpu")
    optimizer = torch.optim.AdamW(groups, lr=config.lr, fused=fused)
    warmup = max(1, round(config.warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def echo_weight(model: DualEncoder, config: TrainConfig) -> float:
    """The echo objective's weight for this model: ``config.echo_weight``, or 0 if tied.

    A tied encoder reads the echo exactly as it reads the question, so the echo scores the
    question's own norm (cosine 1.0): a constant no training can lower. As a negative it would
    only sit at the top of every row of the softmax (MedQuAD, 3 seeds: tied towers reached
    Recall@1 0.557 with it, 0.835 without), so tied towers train without it.
    """
    return 0.0 if model.config.tied else max(config.echo_weight, 0.0)


def chance_loss(batch: int, config: TrainConfig, model: DualEncoder) -> float:
    """The loss of a model that tells nothing apart: ``ln`` of the candidates per question
    (the batch's answers, plus the echo negative when it is one), plus ``echo_weight * ln 2``
    for the answer prior's detector when it learns from the echoes."""
    echo = echo_weight(model, config)
    if model.has_prior:
        return math.log(batch) + echo * math.log(2)
    return math.log(batch + echo)


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
    with _autocast(model.device, config.precision):
        q_batch = collate(q_ids, data.pad_id)
        q_emb = model.embed_questions(q_batch)
        chunks = config.answer_chunks or (1 if model.device.type == "cuda" else 4)
        a_emb = embed_in_chunks(
            model.embed_answers, [data.a_ids[i] for i in rows], data.pad_id, chunks
        )
        weight = echo_weight(model, config)
        echo_emb = model.embed_echoes(q_batch) if weight > 0 else None
        loss = in_batch_loss(
            q_emb,
            a_emb,
            config.scale,
            config.symmetric,
            data.answer_ids[rows].to(model.device),
            echo_emb,
            weight,
            model.has_prior,
        )
    loss.backward()
    return loss.detach()


# Settings that may change when a run is resumed; every other one must match the checkpoint.
# (The last five change how the loss is computed or read back, not what it is.)
RESUME_FREE = (
    "device",
    "checkpoint_every",
    "eval_batch_size",
    "log_every",
    "compile",
    "precision",
    "answer_chunks",
    "grad_cache_chunk",
)


def fit(
    model: DualEncoder,
    train: Pairs,
    val: Pairs | None = None,
    config: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    resume: bool = False,
) -> History:
    """Train both towers with the in-batch contrastive loss.

    Args:
        model: the dual encoder (moved to ``config.device``).
        train: training pairs.
        val: validation pairs; Recall@1 and MRR@10 are measured on them after each epoch.
        config: optimisation settings; None = ``TrainConfig()``.
        out_dir: if given, ``out_dir/last`` (every epoch) and ``out_dir/best`` (best
            validation MRR@10, ties to the lower echo rate; without validation, the last
            epoch) are saved there, and checkpoints go to ``out_dir/checkpoints`` (every
            epoch, and every ``config.checkpoint_every`` steps; deleted when the run finishes).
        progress: show a tqdm bar with the running loss.
        resume: continue from the newest complete checkpoint in ``out_dir``, with the same
            model, data and settings; the result equals an uninterrupted run's.

    Returns:
        The loss per step and the validation metrics per epoch (of the whole run, when resumed).

    Raises:
        QAError: too few pairs for one batch, the loss became NaN or infinite, or nothing
            (or something different) to resume from.
    """
    from tqdm.auto import tqdm

    config = config or TrainConfig()
    if len(train) < 2:
        raise QAError(f"{train.name or 'training data'}: need at least 2 pairs to train")
    if resume and out_dir is None:
        raise QAError("resume=True needs out_dir, the folder of the interrupted run")
    if config.checkpoint_every is not None and config.checkpoint_every < 1:
        raise QAError(f"checkpoint_every={config.checkpoint_every}: give a number of steps >= 1")
    use_bf16(resolve_device(config.device), config.precision)  # an unknown name fails here
    seed_everything(config.seed)
    prepare_model(model, config)
    data = tokenize_pairs(model, train)
    if config.hard_negatives > 0:
        from qa_lib.negatives import mine_bm25_negatives

        data.negatives = mine_bm25_negatives(train, config.hard_negatives)
    groups = train.groups if config.group_batches else None
    per_epoch = len(epoch_batches(len(train), config.batch_size, config.seed, 0, groups))
    total = per_epoch * config.num_epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    optimizer, scheduler = make_optimizer(model, config, total)
    batch = min(config.batch_size, len(train))
    history, run = History(chance_loss=chance_loss(batch, config, model)), RunState()
    identity = _identity(config, model, train.fingerprint())
    checkpoint = partial(_checkpoint, out_dir, model, optimizer, scheduler, identity)
    if resume:
        history, run = _resume(out_dir, model, optimizer, scheduler, identity)
    elif out_dir is not None:
        clear_checkpoints(out_dir)
    bar = tqdm(
        total=total, initial=run.step, desc="train", disable=not progress, dynamic_ncols=True
    )
    # CPU: read every loss back at once; CUDA: every 10 steps, so the host queues work ahead
    sync_every = config.log_every or (10 if model.device.type == "cuda" else 1)
    pending: list | None = None if sync_every == 1 else []  # steps not yet read back
    while run.epoch < config.num_epochs and run.step < total:
        run.batches = run.batches or epoch_batches(
            len(train), config.batch_size, config.seed, run.epoch, groups
        )
        for idx in run.batches[run.batch :]:
            if run.step >= total:
                break
            loss = train_step(model, data, idx, config)
            _apply_step(model, optimizer, scheduler, config, loss, run, out_dir, pending)
            due = _checkpoint_due(config, run, total)
            if pending and (due or len(pending) >= sync_every):
                _read_back(pending, run, out_dir)
            bar.update()
            if run.losses:
                recent = run.losses[-20:]
                bar.set_postfix(epoch=run.epoch + 1, loss=f"{sum(recent) / len(recent):.3f}")
            if due:
                checkpoint(run, history)
        if pending:
            _read_back(pending, run, out_dir)
        _finish_epoch(model, val, config, run, history, out_dir)
        if run.epoch < config.num_epochs and run.step < total:
            checkpoint(run, history)
    bar.close()
    if out_dir is not None:
        clear_checkpoints(out_dir)  # finished: best/ and last/ hold the result
    return history


def _apply_step(
    model, optimizer, scheduler, config, loss: torch.Tensor, run: RunState, out_dir, pending
) -> None:
    """Clip, step the optimiser and the schedule, count the step.

    With ``pending`` None the loss and gradient norm are checked first, so nothing non-finite
    reaches the weights; otherwise they are queued for :func:`_read_back` (no host sync now).
    """
    max_norm = config.max_grad_norm if config.max_grad_norm > 0 else math.inf  # inf: check only
    # the towers and the answer prior's detector are clipped apart, so the detector's gradient
    # never rescales the towers' (they then train exactly as without the echo objective)
    towers, prior = [], []
    for name, param in model.named_parameters():
        (prior if name.startswith(PRIOR_PREFIX) else towers).append(param)
    norm = torch.nn.utils.clip_grad_norm_(towers, max_norm)
    if prior:
        norm = norm + torch.nn.utils.clip_grad_norm_(prior, max_norm)  # summed: checked below
    if pending is None:
        _check_finite("loss", loss.item(), run.step, out_dir)
        _check_finite("gradient norm", norm.item(), run.step, out_dir)
        run.losses.append(loss.item())
    else:
        pending.append((run.step, loss, norm))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    run.step, run.batch = run.step + 1, run.batch + 1


def _read_back(pending: list, run: RunState, out_dir) -> None:
    """Read queued losses and gradient norms in one host sync; stop at the first non-finite."""
    values = torch.stack([torch.stack([loss.float(), norm.float()]) for _, loss, norm in pending])
    for (step, _, _), (loss, norm) in zip(pending, values.tolist()):
        _check_finite("loss", loss, step, out_dir)
        _check_finite("gradient norm", norm, step, out_dir)
        run.losses.append(loss)
    pending.clear()


def _check_finite(what: str, value: float, step: int, out_dir: str | Path | None) -> None:
    """Stop before a NaN or infinite value reaches the weights (or a checkpoint)."""
    if math.isfinite(value):
        return
    kept = f" (the models and checkpoints saved before are kept in {out_dir})" if out_dir else ""
    raise QAError(
        f"the {what} became {value} at step {step + 1}; lower --lr or the scale, "
        f"or check the data{kept}"
    )


def _checkpoint_due(config: TrainConfig, run: RunState, total: int) -> bool:
    """A mid-epoch checkpoint every ``checkpoint_every`` steps (epoch ends have their own)."""
    every = config.checkpoint_every
    mid_epoch = run.batch < len(run.batches) and run.step < total
    return bool(every) and mid_epoch and run.step % every == 0


def _finish_epoch(
    model: DualEncoder,
    val: Pairs | None,
    config: TrainConfig,
    run: RunState,
    history: History,
    out_dir: str | Path | None,
) -> None:
    """Record the epoch, validate, save ``last`` (and ``best`` if it improved), move on."""
    history.step_loss.extend(run.losses)
    losses, epoch = run.losses, run.epoch
    record = {"epoch": epoch + 1, "loss": sum(losses) / max(1, len(losses)), "steps": run.step}
    if val is not None and len(val):
        metrics = evaluate(model, val, config.eval_batch_size)
        record.update({k: metrics[k] for k in ("recall@1", "mrr@10", "question_echo_rate")})
    history.epochs.append(record)
    # best = highest validation MRR@10; ties go to the lower echo rate, then the later epoch
    score = (record.get("mrr@10", 0.0), -record.get("question_echo_rate", 0.0), epoch)
    improved = run.best is None or score > tuple(run.best)
    if improved:
        run.best, history.best_epoch = score, epoch + 1
    if out_dir is not None:
        model.save(Path(out_dir) / "last")
        if improved:
            model.save(Path(out_dir) / "best")
    log.info("epoch %d: %s", epoch + 1, record)
    run.epoch, run.batch, run.batches, run.losses = epoch + 1, 0, None, []


def _checkpoint(
    out_dir, model, optimizer, scheduler, identity: dict, run: RunState, history: History
) -> None:
    """Save everything needed to continue from here (a no-op without ``out_dir``)."""
    if out_dir is None:
        return
    state = {
        "step": run.step,
        "run": asdict(run),
        "history": history.as_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": capture_rng(),
        "identity": identity,
    }
    save_checkpoint(out_dir, state)


def _identity(config: TrainConfig, model: DualEncoder, fingerprint: str) -> dict:
    """What must not change between a run and its resumption: settings, model, data."""
    train = {f"train.{k}": v for k, v in asdict(config).items() if k not in RESUME_FREE}
    encoder = {f"model.{k}": v for k, v in asdict(model.config).items()}
    return {**train, **encoder, "data fingerprint": fingerprint}


def _resume(
    out_dir: str | Path, model, optimizer, scheduler, identity: dict
) -> tuple[History, RunState]:
    """Load the newest complete checkpoint into the model, optimiser, scheduler and RNGs.

    Returns:
        The history so far and where to continue.
    """
    state = load_latest_checkpoint(out_dir)
    if state is None:
        raise QAError(
            f"{out_dir}: no complete checkpoint to resume from (none was written yet, or the "
            f"run finished); start a fresh run instead (without --resume, with --overwrite)"
        )
    saved = state["identity"]
    for key, value in identity.items():
        if saved.get(key) != value:
            raise QAError(
                f"{out_dir}: the checkpoint was written with {key} = {saved.get(key)!r}, this run "
                f"has {value!r}; resume with the original settings, or start a fresh run"
            )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"])
    clear_checkpoints(out_dir, after=state["step"])
    recover_interrupted_saves(out_dir)
    history = History(**{**state["history"], "resumed_from": state["step"]})
    log.info("resumed from step %d of %s", state["step"], out_dir)
    return history, RunState(**state["run"])
