from __future__ import annotations

import torch
from torch.testing import assert_close

from tests.test_encoders import TEXTS


def test_length_sorted_encoding_keeps_input_order(tiny_model):
    together = tiny_model.encode_answers(TEXTS, batch_size=2)
    one_by_one = torch.cat([tiny_model.encode_answers([t]) for t in TEXTS])
    assert_close(together, one_by_one, atol=1e-5, rtol=1e-5)


def test_block_tokenised_batches_equal_tokenising_each_batch(tiny_model):
    from qa_lib.batching import sorted_chunks
    from qa_lib.inference import TOKENIZE_BLOCK, tokenized_batches

    # "the" is one token, "x7q" several: texts of one length in characters differ in tokens
    words = ("the", "x7q")
    texts = [" ".join([words[i % 2]] * (1 + i % 13)) for i in range(3 * TOKENIZE_BLOCK * 2)]
    batches = list(tokenized_batches(tiny_model, texts, max_len=24, batch_size=2))
    assert len(batches) == len(texts) // 2 and sorted(i for idx, _ in batches for i in idx) == list(
        range(len(texts))
    )
    assert max(b["input_ids"].shape[1] for _, b in batches) == 24  # truncated to max_len
    by_chars = sorted_chunks([len(t) for t in texts], 2, longest_first=True)
    slots = sum(
        tiny_model.tokenize([texts[i] for i in idx], 24)["input_ids"].numel() for idx in by_chars
    )
    assert sum(b["input_ids"].numel() for _, b in batches) < slots  # re-sorted by token count
    for idx, batch in batches:
        want = tiny_model.tokenize([texts[i] for i in idx], 24)
        assert batch.keys() == want.keys()
        for key, value in want.items():
            assert torch.equal(batch[key], value), key
