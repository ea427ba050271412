"""qa_lib.row_grad: the word embeddings' gradient without a dense zero matrix per forward call."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.testing import assert_close

from qa_lib import DualEncoder
from qa_lib.batching import collate
from qa_lib.row_grad import RowGradEmbedding, use_row_gradients


def test_towers_use_row_gradients_and_keep_their_weights(tiny_model):
    for encoder in (tiny_model.q_encoder, tiny_model.a_encoder):
        embedding = encoder.get_input_embeddings()
        assert type(embedding) is RowGradEmbedding
        assert "embeddings.word_embeddings.weight" in encoder.state_dict()


def _two_passes_grad(model: DualEncoder, dense: bool) -> dict[str, torch.Tensor]:
    """Gradients of a loss over two forward calls (two chunks with padding), no dropout."""
    model = copy.deepcopy(model).eval()
    if dense:
        for encoder in (model.q_encoder, model.a_encoder):
            encoder.get_input_embeddings().__class__ = nn.Embedding
    ids = model.tokenizer(["a b c d e f", "g h", "what is it", "one two three four"])["input_ids"]
    first, second = collate(ids[:2], 0), collate(ids[2:], 0)
    a_emb = torch.cat([model.embed_answers(first), model.embed_answers(second)])
    q_emb = model.embed_questions(collate(ids, 0))
    loss = nn.functional.cross_entropy(20 * q_emb @ a_emb.T, torch.arange(4))
    loss.backward()
    # a second step's gradient accumulates on top, as without zero_grad
    model.embed_answers(first).sum().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_same_gradients_as_pytorchs_dense_backward(tiny_model):
    rows, dense = _two_passes_grad(tiny_model, False), _two_passes_grad(tiny_model, True)
    assert rows.keys() == dense.keys()
    for name in dense:
        assert_close(rows[name], dense[name], rtol=1e-5, atol=1e-6, msg=name)
    word = "a_encoder.embeddings.word_embeddings.weight"
    assert rows[word][0].abs().sum() == 0  # the padding row gets nothing, as in PyTorch
    assert rows[word].abs().sum() > 0


def test_the_buffer_is_reused_and_zeroed_after_set_to_none():
    torch.manual_seed(0)
    embedding = nn.Embedding(10, 4, padding_idx=0)
    use_row_gradients(type("M", (), {"get_input_embeddings": lambda self: embedding})())
    assert type(embedding) is RowGradEmbedding
    embedding(torch.tensor([[1, 2, 0]])).sum().backward()
    first = embedding.weight.grad
    expected = torch.zeros(10, 4)
    expected[1] = expected[2] = 1
    assert_close(first, expected)
    embedding.weight.grad = None  # zero_grad(set_to_none=True)
    embedding(torch.tensor([[3]])).sum().backward()
    assert embedding.weight.grad is first  # the same memory, zeroed: no new allocation
    expected = torch.zeros(10, 4)
    expected[3] = 1
    assert_close(embedding.weight.grad, expected)


def test_no_gradient_path_and_frozen_weights_are_the_plain_embedding():
    embedding = nn.Embedding(5, 3)
    embedding.__class__ = RowGradEmbedding
    with torch.no_grad():
        out = embedding(torch.tensor([1, 2]))
    assert not out.requires_grad
    embedding.weight.requires_grad_(False)
    assert not embedding(torch.tensor([1])).requires_grad
    assert_close(out, embedding.weight[[1, 2]])
