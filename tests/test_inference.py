from __future__ import annotations

import torch
from torch.testing import assert_close

from tests.test_encoders import TEXTS


def test_length_sorted_encoding_keeps_input_order(tiny_model):
    together = tiny_model.encode_answers(TEXTS, batch_size=2)
    one_by_one = torch.cat([tiny_model.encode_answers([t]) for t in TEXTS])
    assert_close(together, one_by_one, atol=1e-5, rtol=1e-5)
