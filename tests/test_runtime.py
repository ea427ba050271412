from __future__ import annotations

import random

import numpy as np
import torch

from qa_lib.runtime import capture_rng, prefetched, restore_rng


def test_prefetched_keeps_order_with_several_threads():
    assert list(prefetched(lambda x: x * x, range(50), workers=4)) == [x * x for x in range(50)]


def _draws() -> tuple:
    return random.random(), np.random.rand(), torch.rand(3).tolist(), torch.randn(2).tolist()


def test_rng_states_round_trip():
    torch.manual_seed(1)
    np.random.randn()  # leave a cached Gaussian in NumPy's state
    saved = capture_rng()
    first = _draws()
    _draws()
    restore_rng(saved)
    assert _draws() == first
