"""Train a dual encoder with the in-batch contrastive loss: the loop (notebook 04).

``fit`` is the loop notebook 04 writes by hand, plus what a long run needs: validation after each
epoch, the best model kept, checkpoints to resume from, and a stop before a NaN reaches the weights.

Under torchrun every process runs ``fit`` with the same arguments (:mod:`qa_lib.distributed`):
the same global batches, each embedding its share; rank 0 alone validates and writes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from qa_lib.batching import TokenizedPairs, epoch_batches, tokenize_pairs
from qa_lib.checkpoint import (
    clear_checkpoints,
    load_latest_checkpoint,
    save_checkpoint,
)
from qa_lib.config import TrainConfig
from qa_lib.data import Pairs
from qa_lib.distributed import (
    World,
    barrier,
    broadcast_object,
    broadcast_parameters,
    check_batch_size,
    gather_objects,
    init_distributed,
    process_device,
)
from qa_lib.errors import QAError
from qa_lib.evaluate import evaluate
from qa_lib.negatives import mine_bm25_negatives
from qa_lib.optim import clip_gradients, make_optimizer
from qa_lib.runtime import capture_rng, resolve_device, restore_rng, seed_everything, use_bf16
from qa_lib.saving import recover_interrupted_saves
from qa_lib.step import chance_loss, train_step

log = logging.getLogger(__name__)

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


@dataclass
class History:
    """What happened during :func:`fit`."""

    step_loss: list[float] = field(default_factory=list)  # training loss per optimiser step
    epochs: list[dict] = field(default_factory=list)  # per epoch: mean loss + validation metrics
    chance_loss: float = 0.0  # loss of a model that cannot tell answers apart: ln(candidates)
    best_epoch: int | None = None  # epoch with the best validation mrr@10 (1-based)
    resumed_from: int | None = None  # step of the checkpoint this run resumed from, if any

    def as_dict(self) -> dict:
        return asdict(self)


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
class Loop:
    """Everything the loop's steps share: what :func:`fit` set up once."""

    model: object  # the DualEncoder
    data: TokenizedPairs
    config: TrainConfig
    optimizer: torch.optim.Optimizer
    scheduler: object
    total: int  # optimiser steps of the whole run
    identity: dict  # what a checkpoint must match to be resumed (see run_identity)
    out_dir: Path | None
    on_step: Callable[[int], None] | None
    sync_every: int  # steps between loss read-backs (one host sync for all of them)
    world: World = field(default_factory=World)  # this process among the run's (torchrun)
    pending: list = field(default_factory=list)  # steps not yet read back


def prepare_model(model, config: TrainConfig):
    """Move the model to its device in training mode; compile the towers if asked.

    ``Module.compile`` compiles in place, so parameter names (and saved files) do not change.
    The model then also encodes (validation, search) at ``config.precision``.
    """
    model.to(resolve_device(config.device)).train()
    model.precision = config.precision
    if config.compile:
        for encoder in {id(m): m for m in (model.q_encoder, model.a_encoder)}.values():
            encoder.compile(dynamic=None)
        model.compiled = True
    return model


def fit(
    model,
    train: Pairs,
    val: Pairs | None = None,
    config: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    resume: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> History:
    """Train both towers with the in-batch contrastive loss.

    Args:
        model: the :class:`~qa_lib.encoders.DualEncoder` (moved to ``config.device``).
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
        on_step: called before each optimiser step with the number of steps done (timing,
            logging, stopping a run early by raising).

    Under torchrun (``WORLD_SIZE`` > 1) every process calls ``fit`` with the same arguments;
    ``config.batch_size`` is the global batch, split over the processes, and ``cuda`` means
    ``cuda:LOCAL_RANK``. Rank 0 alone validates and writes to ``out_dir``; every process
    returns the same history and holds the same weights.

    Returns:
        The loss per step and the validation metrics per epoch (of the whole run, when resumed).

    Raises:
        QAError: too few pairs for one batch, the loss became NaN or infinite, or nothing
            (or something different) to resume from; under torchrun, a global batch size
            that does not split over the processes.
    """
    from tqdm.auto import tqdm

    config = config or TrainConfig()
    loop = _set_up(model, train, config, out_dir, resume, on_step)
    config, main = loop.config, loop.world.is_main
    history = History(chance_loss=chance_loss(min(config.batch_size, len(train)), config, model))
    run = RunState()
    if resume:
        history, run = _resume(loop)
    elif out_dir is not None and main:
        clear_checkpoints(out_dir)
    # leave=False: the finished bar is cleared (callers print a summary); mininterval: a text bar
    # (no ipywidgets, or a headless run) writes at most every 2 s, not once per step
    bar = tqdm(
        total=loop.total,
        initial=run.step,
        desc="train",
        disable=not (progress and main),
        dynamic_ncols=True,
        leave=False,
        mininterval=2.0,
    )
    while run.epoch < config.num_epochs and run.step < loop.total:
        run.batches = run.batches or _epoch_order(train, config, run.epoch, loop.world)
        _run_epoch(loop, run, history, bar)
        _finish_epoch(loop, val, run, history)
        if run.epoch < config.num_epochs and run.step < loop.total:
            _save_checkpoint(loop, run, history)
    bar.close()
    if out_dir is not None and main:
        clear_checkpoints(out_dir)  # finished: best/ and last/ hold the result
    barrier(loop.world)  # every process returns once rank 0 has written
    return history


def _epoch_order(train: Pairs, config: TrainConfig, epoch: int, world: World) -> list[list[int]]:
    """The epoch's global batches; under torchrun without a last batch too small to split."""
    groups = train.groups if config.group_batches else None
    batches = epoch_batches(len(train), config.batch_size, config.seed, epoch, groups)
    return [b for b in batches if len(b) >= world.size]


def _set_up(model, train: Pairs, config: TrainConfig, out_dir, resume: bool, on_step) -> Loop:
    """Check the arguments, seed, prepare the model, tokenise the data, build the optimiser."""
    if len(train) < 2:
        raise QAError(f"{train.name or 'training data'}: need at least 2 pairs to train")
    if resume and out_dir is None:
        raise QAError("resume=True needs out_dir, the folder of the interrupted run")
    if config.checkpoint_every is not None and config.checkpoint_every < 1:
        raise QAError(f"checkpoint_every={config.checkpoint_every}: give a number of steps >= 1")
    world = init_distributed(config.device)
    check_batch_size(config.batch_size, world)
    if world.size > 1:
        config = replace(config, device=process_device(config.device))
    use_bf16(resolve_device(config.device), config.precision)  # an unknown name fails here
    seed_everything(config.seed)
    torch.manual_seed(config.seed + world.rank)  # own dropout masks per process; rank 0's as one
    prepare_model(model, config)
    broadcast_parameters(model, world)  # every process starts from rank 0's weights
    data = tokenize_pairs(model, train)
    if config.hard_negatives > 0:
        data.negatives = mine_bm25_negatives(train, config.hard_negatives)
    total = len(_epoch_order(train, config, 0, world)) * config.num_epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    optimizer, scheduler = make_optimizer(model, config, total)
    # CPU: read every loss back at once; CUDA: every 10 steps, so the host queues work ahead
    sync_every = config.log_every or (10 if model.device.type == "cuda" else 1)
    identity = run_identity(config, model.config, train.fingerprint())
    out = Path(out_dir) if out_dir is not None else None
    return Loop(
        model, data, config, optimizer, scheduler, total, identity, out, on_step, sync_every, world
    )


def _run_epoch(loop: Loop, run: RunState, history: History, bar) -> None:
    """The optimiser steps of one epoch (from where a resumed run stopped)."""
    for idx in run.batches[run.batch :]:
        if run.step >= loop.total:
            break
        if loop.on_step is not None:
            loop.on_step(run.step)
        loss = train_step(loop.model, loop.data, idx, loop.config)  # forward + backward
        _apply_step(loop, loss, run)  # clip, optimiser and schedule step
        due = _checkpoint_due(loop, run)
        if loop.pending and (due or len(loop.pending) >= loop.sync_every):
            _read_back(loop, run)
        bar.update()
        if run.losses:
            recent = run.losses[-20:]
            running = f"{sum(recent) / len(recent):.3f}"
            bar.set_postfix(epoch=run.epoch + 1, loss=running, refresh=False)  # at the next draw
        if due:
            _save_checkpoint(loop, run, history)
    if loop.pending:
        _read_back(loop, run)


def _apply_step(loop: Loop, loss: torch.Tensor, run: RunState) -> None:
    """Clip, step the optimiser and the schedule, count the step.

    When every loss is read back at once (``sync_every`` 1), the loss and gradient norm are
    checked first, so nothing non-finite reaches the weights; otherwise they are queued for
    :func:`_read_back` (no host sync now).
    """
    norm = clip_gradients(loop.model, loop.config.max_grad_norm)
    if loop.sync_every == 1:
        _check_finite("loss", loss.item(), run.step, loop.out_dir)
        _check_finite("gradient norm", norm.item(), run.step, loop.out_dir)
        run.losses.append(loss.item())
    else:
        loop.pending.append((run.step, loss, norm))
    loop.optimizer.step()
    loop.scheduler.step()
    loop.optimizer.zero_grad(set_to_none=True)
    run.step, run.batch = run.step + 1, run.batch + 1


def _read_back(loop: Loop, run: RunState) -> None:
    """Read queued losses and gradient norms in one host sync; stop at the first non-finite."""
    pending = loop.pending
    values = torch.stack([torch.stack([loss.float(), norm.float()]) for _, loss, norm in pending])
    for (step, _, _), (loss, norm) in zip(pending, values.tolist()):
        _check_finite("loss", loss, step, loop.out_dir)
        _check_finite("gradient norm", norm, step, loop.out_dir)
        run.losses.append(loss)
    pending.clear()


def _check_finite(what: str, value: float, step: int, out_dir: Path | None) -> None:
    """Stop before a NaN or infinite value reaches the weights (or a checkpoint)."""
    if math.isfinite(value):
        return
    kept = f" (the models and checkpoints saved before are kept in {out_dir})" if out_dir else ""
    raise QAError(
        f"the {what} became {value} at step {step + 1}; lower --lr or the scale, "
        f"or check the data{kept}"
    )


def _checkpoint_due(loop: Loop, run: RunState) -> bool:
    """A mid-epoch checkpoint every ``checkpoint_every`` steps (epoch ends have their own)."""
    every = loop.config.checkpoint_every
    mid_epoch = run.batch < len(run.batches) and run.step < loop.total
    return bool(every) and mid_epoch and run.step % every == 0


def _finish_epoch(loop: Loop, val: Pairs | None, run: RunState, history: History) -> None:
    """Record the epoch, validate, save ``last`` (and ``best`` if it improved), move on."""
    history.step_loss.extend(run.losses)
    losses, epoch = run.losses, run.epoch
    record = {"epoch": epoch + 1, "loss": sum(losses) / max(1, len(losses)), "steps": run.step}
    if val is not None and len(val):
        metrics = None
        if loop.world.is_main:  # the others wait for its metrics
            metrics = evaluate(loop.model, val, loop.config.eval_batch_size)
        metrics = broadcast_object(metrics, loop.world)
        record.update({k: metrics[k] for k in ("recall@1", "mrr@10", "question_echo_rate")})
    history.epochs.append(record)
    # best = highest validation MRR@10; ties go to the lower echo rate, then the later epoch
    score = (record.get("mrr@10", 0.0), -record.get("question_echo_rate", 0.0), epoch)
    improved = run.best is None or score > tuple(run.best)
    if improved:
        run.best, history.best_epoch = score, epoch + 1
    if loop.out_dir is not None and loop.world.is_main:
        loop.model.save(loop.out_dir / "last")
        if improved:
            loop.model.save(loop.out_dir / "best")
    log.info("epoch %d: %s", epoch + 1, record)
    run.epoch, run.batch, run.batches, run.losses = epoch + 1, 0, None, []


def run_identity(config: TrainConfig, encoder_config, fingerprint: str) -> dict:
    """What must not change between a run and its resumption: settings, model, data."""
    train = {f"train.{k}": v for k, v in asdict(config).items() if k not in RESUME_FREE}
    encoder = {f"model.{k}": v for k, v in asdict(encoder_config).items()}
    return {**train, **encoder, "data fingerprint": fingerprint}


def _save_checkpoint(loop: Loop, run: RunState, history: History) -> None:
    """Save everything needed to continue from here (a no-op without ``out_dir``).

    Under torchrun rank 0 writes it, with every process's random state.
    """
    if loop.out_dir is None:
        return
    rngs = gather_objects(capture_rng(), loop.world)
    if not loop.world.is_main:
        return
    state = {
        "step": run.step,
        "run": asdict(run),
        "history": history.as_dict(),
        "model": loop.model.state_dict(),
        "optimizer": loop.optimizer.state_dict(),
        "scheduler": loop.scheduler.state_dict(),
        "rng": rngs[0],
        "identity": loop.identity,
    }
    if loop.world.size > 1:
        state["rng_ranks"] = rngs
    save_checkpoint(loop.out_dir, state)


def _resume(loop: Loop) -> tuple[History, RunState]:
    """Load the newest complete checkpoint into the model, optimiser, scheduler and RNGs.

    Under torchrun every process loads the same checkpoint (``out_dir`` on a filesystem they
    share) and its own random state; rank 0 then clears what came after it.

    Returns:
        The history so far and where to continue.
    """
    out_dir, world = loop.out_dir, loop.world
    state = load_latest_checkpoint(out_dir)
    steps = gather_objects(None if state is None else state["step"], world)
    if len(set(steps)) > 1:
        raise QAError(
            f"{out_dir}: the processes found different checkpoints (steps {steps}); on several "
            f"nodes --out must be a folder every node shares (a network filesystem)"
        )
    if state is None:
        raise QAError(
            f"{out_dir}: no complete checkpoint to resume from (none was written yet, or the "
            f"run finished); start a fresh run instead (without --resume, with --overwrite)"
        )
    _check_identity(loop, state)
    loop.model.load_state_dict(state["model"])
    loop.optimizer.load_state_dict(state["optimizer"])
    loop.scheduler.load_state_dict(state["scheduler"])
    restore_rng(_own_rng(state, world))
    barrier(world)  # every process has read the checkpoint before rank 0 clears newer ones
    if world.is_main:
        clear_checkpoints(out_dir, after=state["step"])
        recover_interrupted_saves(out_dir)
    history = History(**{**state["history"], "resumed_from": state["step"]})
    log.info("resumed from step %d of %s", state["step"], out_dir)
    return history, RunState(**state["run"])


def _check_identity(loop: Loop, state: dict) -> None:
    """The run resumed must have the settings, model and data of the checkpoint's."""
    saved = state["identity"]
    for key, value in loop.identity.items():
        if saved.get(key) != value:
            raise QAError(
                f"{loop.out_dir}: the checkpoint was written with {key} = {saved.get(key)!r}, "
                f"this run has {value!r}; resume with the original settings, or start a fresh run"
            )


def _own_rng(state: dict, world: World) -> dict:
    """This process's random state in the checkpoint (rank 0's when the run had fewer).

    A run resumed on another number of processes continues with the same global batches; only
    the dropout masks then differ from the uninterrupted run's.
    """
    ranks = state.get("rng_ranks") or [state["rng"]]
    if len(ranks) != world.size:
        log.warning(
            "the checkpoint was written by %d process(es), this run has %d: the same batches "
            "follow, other dropout masks",
            len(ranks),
            world.size,
        )
    return ranks[world.rank] if world.rank < len(ranks) else ranks[0]
