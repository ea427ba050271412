"""Where the work runs: devices, precision, seeds and random state (used from notebook 04 on)."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from qa_lib.errors import QAError

PRECISIONS = ("auto", "fp32", "bf16")  # TrainConfig.precision: see use_bf16


def resolve_device(device: str | None) -> torch.device:
    """``device`` as given, else CUDA when available, else CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware, so bf16 autocast pays off.

    CUDA GPUs from Ampere on; x86 CPUs with AVX512-BF16 or AMX (recent Xeon and EPYC). Elsewhere
    (most laptops, a Colab T4) bf16 would be emulated and slower than fp32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        cpu = torch.cpu
        try:  # private helpers, absent on some builds: then fp32
            return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
        except AttributeError:
            return False
    return False


def use_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Resolve ``precision`` ("auto", "fp32" or "bf16") for ``device``."""
    if precision not in PRECISIONS:
        raise QAError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return native_bf16(device) if precision == "auto" else precision == "bf16"


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast where ``precision`` resolves to bf16; a no-op context otherwise.

    Weights, gradients and optimizer state stay fp32; the matrix products run in bf16.
    """
    if use_bf16(device, precision):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict:
    """Every random state training touches: Python, NumPy, torch CPU and (if present) CUDA.

    Gradient caching replays a forward pass from it (the same dropout masks); checkpoints save
    it so a resumed run draws what the uninterrupted run would have drawn.

    Returns:
        Plain Python values and tensors (loadable with ``torch.load(weights_only=True)``).
    """
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": keys.tolist(), "pos": pos, "gauss": (has_gauss, gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Put back the random states saved by :func:`capture_rng`."""
    random.setstate(state["python"])
    numpy = state["numpy"]
    keys = np.array(numpy["keys"], dtype=np.uint32)
    np.random.set_state((numpy["name"], keys, numpy["pos"], *numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def prefetched(fn: Callable, items: Sequence, workers: int = 1) -> Iterator:
    """Yield ``fn(item)`` in order while background threads compute the next few.

    At most ``2 * workers`` results are in flight, so memory stays bounded on a large corpus.
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
