from __future__ import annotations

from torch.testing import assert_close

from qa_lib.batching import collate, embed_in_chunks, epoch_batches, sorted_chunks, tokenize_pairs


def test_chunked_answers_equal_one_padded_batch(tiny_model, tiny_splits):
    data = tokenize_pairs(tiny_model, tiny_splits[0])
    ids = data.a_tokens[:12]
    tiny_model.eval()  # no dropout, so both paths see the same function
    whole = tiny_model.embed_answers(collate(ids, data.pad_id))
    whole.sum().backward()
    grads = [p.grad.clone() for p in tiny_model.a_encoder.parameters() if p.grad is not None]
    tiny_model.zero_grad()
    chunked = embed_in_chunks(tiny_model.embed_answers, ids, data.pad_id, chunks=4)
    chunked.sum().backward()
    assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    again = [p.grad for p in tiny_model.a_encoder.parameters() if p.grad is not None]
    for g1, g2 in zip(grads, again):
        assert_close(g1, g2, atol=1e-5, rtol=1e-4)


def test_epoch_batches_cover_rows_once_and_are_seeded():
    batches = epoch_batches(50, 16, seed=3, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(50))
    assert batches == epoch_batches(50, 16, seed=3, epoch=0)
    assert batches != epoch_batches(50, 16, seed=3, epoch=1)
    assert all(len(b) > 1 for b in epoch_batches(17, 16, 0, 0))


def test_topic_aware_batches_keep_each_topic_together():
    groups = [f"topic{i % 5}" for i in range(80)]  # 5 topics of 16 rows, interleaved
    batches = epoch_batches(80, 16, seed=3, epoch=0, groups=groups)
    assert sorted(i for b in batches for i in b) == list(range(80))
    assert all(len({groups[i] for i in b}) == 1 for b in batches)  # one topic per batch
    assert batches == epoch_batches(80, 16, seed=3, epoch=0, groups=groups)
    assert batches != epoch_batches(80, 16, seed=3, epoch=1, groups=groups)
    random_batches = epoch_batches(80, 16, seed=3, epoch=0)
    assert max(len({groups[i] for i in b}) for b in random_batches) > 1


def test_length_sorted_chunks_cover_every_row_once():
    lengths = (5, 1, 3, 9, 2)
    assert sorted_chunks(lengths, 2) == [[1, 4], [2, 0], [3]]
    assert sorted_chunks(lengths, 2, longest_first=True) == [[3, 0], [2, 4], [1]]


def test_auto_answer_length_reads_the_passages_lengths(tiny_model):
    from qa_lib.batching import auto_answer_length

    tok = tiny_model.tokenizer
    short, long = "a short answer.", " ".join(["word"] * 200)  # about 5 and 202 tokens
    assert auto_answer_length(tok, [short] * 10) == 128
    assert auto_answer_length(tok, [long] * 2 + [short] * 8) == 128  # a fifth run past 128
    assert auto_answer_length(tok, [long] * 3 + [short] * 7) == 256  # over a quarter
    assert auto_answer_length(tok, []) == 128
    many = [long] * 300 + [short] * 700  # sampled: the same answer from a 100-text sample
    assert auto_answer_length(tok, many, sample=100) == auto_answer_length(tok, many) == 256
