"""A BERT forward pass that skips the padding (CPU training speed: README, Performance).

In a padded batch every row is as long as its longest text, and a BERT layer spends nearly all
of its work on token-wise products (the attention's projections, the feed-forward) that padded
positions only waste. On NQ answers, four length-sorted chunks per batch are still 18 % padding
(``benchmarks/profile_step.py``). Here the token-wise parts run on the real tokens alone, packed
into one ``(tokens, hidden)`` matrix; only attention, which needs each text's rows together,
sees the padded ``(batch, length)`` layout, with the padding masked as in transformers' own
pass. The layers' own modules run (weights, LayerNorm). Dropout draws its masks over the padded
grid, as transformers' pass does, and keeps the real tokens' rows: the same random stream, so a
seed trains the same towers packed or not (tested: the same losses step by step, with dropout
on).

Only a plain BERT encoder (``BertModel``: MiniLM, BERT-base, ...) is packed; any other model
runs its own forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def can_pack(encoder: nn.Module) -> bool:
    """Whether :func:`packed_forward` reproduces ``encoder``'s own forward pass."""
    cfg = getattr(encoder, "config", None)
    return (
        type(encoder).__name__ == "BertModel"
        and cfg is not None
        and not cfg.is_decoder
        and not cfg.add_cross_attention
        and not getattr(cfg, "chunk_size_feed_forward", 0)
        and getattr(cfg, "position_embedding_type", "absolute") == "absolute"
        and getattr(cfg, "_attn_implementation", "sdpa") in ("sdpa", "eager")
    )


@dataclass
class Packing:
    """Where a padded batch's real tokens are: ``rows`` index its flattened ``(B * L)`` grid."""

    rows: torch.Tensor  # flat positions of the real tokens. Shape (tokens,)
    shape: tuple[int, int]  # (batch, length)

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """``(B, L, d)`` or ``(B * L, d)`` to the real tokens' ``(tokens, d)``."""
        return padded.reshape(-1, padded.shape[-1]).index_select(0, self.rows)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """``(tokens, d)`` to ``(B, L, d)``, zeros at the padding."""
        b, length = self.shape
        grid = packed.new_zeros(b * length, packed.shape[-1])
        return grid.index_copy(0, self.rows, packed).view(b, length, -1)


def _dropout(x: torch.Tensor, dropout: nn.Dropout, packing: Packing, training: bool):
    """``dropout`` on packed rows with the mask transformers' padded pass would draw.

    PyTorch's CPU dropout fills a tensor of the input's shape with ``bernoulli_(1 - p)``, divides
    it by ``1 - p`` and multiplies; here that tensor has the padded grid's shape, and its rows at
    the real tokens multiply ``x``.
    """
    p = dropout.p
    if not training or p == 0:
        return x
    b, length = packing.shape
    noise = x.new_empty(b * length, x.shape[-1]).bernoulli_(1 - p)
    return x * noise.div_(1 - p).index_select(0, packing.rows)


def _residual(block: nn.Module, h: torch.Tensor, x: torch.Tensor, packing: Packing, training):
    """A BertSelfOutput or BertOutput on packed rows: dense, dropout, LayerNorm of the sum."""
    return block.LayerNorm(_dropout(block.dense(h), block.dropout, packing, training) + x)


def _attention(attention: nn.Module, x: torch.Tensor, packing: Packing, key_mask, training: bool):
    """BertSelfAttention on packed tokens: the projections packed, the scores per text."""
    heads, size = attention.num_attention_heads, attention.attention_head_size
    b, length = packing.shape

    def per_head(projection: nn.Linear) -> torch.Tensor:  # (B, heads, L, size)
        return packing.unpack(projection(x)).view(b, length, heads, size).transpose(1, 2)

    context = nn.functional.scaled_dot_product_attention(
        per_head(attention.query),
        per_head(attention.key),
        per_head(attention.value),
        attn_mask=key_mask,
        dropout_p=attention.dropout.p if training else 0.0,
        scale=attention.scaling,
    )
    return packing.pack(context.transpose(1, 2).reshape(b, length, heads * size))


def packed_forward(
    encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, capture: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``encoder``'s last hidden state, computed without the padding.

    Args:
        encoder: a model :func:`can_pack` accepts.
        input_ids: token ids, right-padded. Shape (B, L).
        attention_mask: 1 for real tokens. Shape (B, L).
        capture: also return ``hidden_states[capture]`` (the output of layer ``capture - 1``);
            0 = none.

    Returns:
        ``(last, middle)``: shape (B, L, hidden) each, zeros at the padding; ``middle`` None
        without ``capture``.
    """
    mask = attention_mask.bool()
    packing = Packing(mask.reshape(-1).nonzero().squeeze(1), tuple(mask.shape))
    x = packing.pack(encoder.embeddings(input_ids=input_ids))
    key_mask = mask[:, None, None, :]  # (B, 1, 1, L): every query ignores the padded keys
    middle = None
    for i, layer in enumerate(encoder.encoder.layer):
        training = encoder.training
        context = _attention(layer.attention.self, x, packing, key_mask, training)
        x = _residual(layer.attention.output, context, x, packing, training)
        x = _residual(layer.output, layer.intermediate(x), x, packing, training)
        if i + 1 == capture:
            middle = packing.unpack(x)
    return packing.unpack(x), middle
