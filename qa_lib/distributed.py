"""Training on several processes with torchrun (README, "Scaling up"; notebook 06).

``torchrun --nproc_per_node N -m qa_lib train ...`` (or ``accelerate launch``) starts N copies of
the same command with ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` set. Every process computes the
same global batch order; each embeds its contiguous share of each global batch; the question and
answer embeddings are all-gathered *with gradients*, so every question sees the whole global
batch's answers as negatives, and every process computes the global batch's loss. The gather's
backward sums the W identical gradient copies into each process's own rows, and averaging the
parameter gradients over the processes (as DistributedDataParallel does) divides by W again: the
weights follow exactly the single-process run with the same global batch (dropout aside).

Everything here is the identity in one process, so single-process training runs unchanged.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch

from qa_lib.errors import QAError

LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")  # set by torchrun and accelerate launch


@dataclass(frozen=True)
class World:
    """Which process this is among how many."""

    rank: int = 0  # 0 .. size - 1; rank 0 alone writes files
    size: int = 1  # processes in the run (all nodes)
    local_rank: int = 0  # the process's index on its node: its GPU

    @property
    def is_main(self) -> bool:
        """Whether this process writes the checkpoints, models, plots and metrics."""
        return self.rank == 0


def launched() -> bool:
    """Whether a launcher (torchrun, accelerate launch) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current_world() -> World:
    """This process's place in the initialised process group (one process: ``World()``)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return World()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return World(dist.get_rank(), dist.get_world_size(), local)


def process_device(device: str | None) -> str | None:
    """The device of this process: ``cuda:LOCAL_RANK`` under a launcher on a CUDA machine.

    Raises:
        QAError: a fixed ``cuda:N`` (every process would take the same GPU), or fewer GPUs
            on the node than processes.
    """
    if not launched() or device == "cpu":
        return device
    if device is None and not torch.cuda.is_available():
        return "cpu"
    if device not in (None, "cuda"):
        raise QAError(
            f"--device {device}: under torchrun each process takes cuda:LOCAL_RANK; "
            f"pass --device cuda (or cpu), or omit --device"
        )
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if local >= torch.cuda.device_count():
        raise QAError(
            f"process {local} of this node has no GPU ({torch.cuda.device_count()} visible); "
            f"start at most that many processes per node (--nproc_per_node)"
        )
    return f"cuda:{local}"


def init_distributed(device: str | None = None) -> World:
    """Join the launcher's process group (gloo on the CPU, nccl on CUDA); idempotent.

    Args:
        device: the device option as given (None, "cpu", "cuda").

    Returns:
        This process's :class:`World`; ``World()`` when not launched by torchrun.

    Raises:
        QAError: a launcher variable is missing, or the device does not fit (process_device).
    """
    if not launched():
        return World()
    dist = torch.distributed
    if dist.is_initialized():
        return current_world()
    missing = [name for name in LAUNCH_VARS if name not in os.environ]
    if missing or not dist.is_available():
        raise QAError(
            f"WORLD_SIZE > 1 but {', '.join(missing) or 'torch.distributed'} is missing; "
            f"start the run with torchrun or accelerate launch"
        )
    resolved = process_device(device)
    if resolved and resolved.startswith("cuda"):
        torch.cuda.set_device(resolved)
        dist.init_process_group("nccl", device_id=torch.device(resolved))
    else:
        dist.init_process_group("gloo")
    return current_world()


def shutdown() -> None:
    """Leave the process group (a no-op in one process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def check_batch_size(batch_size: int, world: World) -> None:
    """Every process takes an equal share of each global batch.

    Raises:
        QAError: ``batch_size`` is not a multiple of the number of processes.
    """
    if batch_size % world.size:
        raise QAError(
            f"--batch-size {batch_size} (the global batch) does not split over {world.size} "
            f"processes; pass a multiple of {world.size} (e.g. "
            f"{max(world.size, batch_size // world.size * world.size)}) or change --nproc_per_node"
        )


def shard_sizes(n: int, size: int) -> list[int]:
    """Rows of a batch of ``n`` per process: equal, the first ``n % size`` one more."""
    return [n // size + (rank < n % size) for rank in range(size)]


def shard(rows: list[int], world: World, rank: int | None = None) -> list[int]:
    """The contiguous share of ``rows`` that process ``rank`` (default: this one) embeds.

    The shares in rank order are ``rows`` again, so the gathered embeddings keep their order.
    """
    sizes = shard_sizes(len(rows), world.size)
    rank = world.rank if rank is None else rank
    start = sum(sizes[:rank])
    return list(rows[start : start + sizes[rank]])


def gather_rows(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every process's rows of ``x`` in rank order, with gradients.

    Args:
        x: this process's rows. Shape (sizes[rank], ...).
        sizes: the rows of every process, known to all (no extra round trip).

    Returns:
        Shape (sum(sizes), ...); the identity in one process. The backward pass sums the
        gradients of every process for this process's rows.
    """
    if len(sizes) == 1 or max(sizes) == 0:
        return x
    from torch.distributed.nn.functional import all_gather

    longest = max(sizes)
    padded = x
    if x.shape[0] < longest:
        padded = torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))])
    with warnings.catch_warnings():  # torch 2.9+ points to a private module instead
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def average_gradients(params, world: World) -> None:
    """Average the parameters' gradients over the processes in one all-reduce (as DDP does).

    Parameters without a gradient (the same on every process: each runs the same code) are
    skipped, so the optimiser treats them as a single process would.
    """
    if world.size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world.size
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def broadcast_parameters(module: torch.nn.Module, world: World) -> None:
    """Copy rank 0's parameters and buffers to every process (the same start everywhere)."""
    if world.size == 1:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            torch.distributed.broadcast(tensor.data, src=0)


def broadcast_object(obj, world: World):
    """Rank 0's ``obj`` on every process (small picklable values: a metrics record)."""
    if world.size == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj, world: World) -> list:
    """Every process's ``obj``, in rank order, on every process."""
    if world.size == 1:
        return [obj]
    out = [None] * world.size
    torch.distributed.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    """Wait until every process gets here (a no-op in one process)."""
    if world.size > 1:
        torch.distributed.barrier()
