"""A BERT forward pass that skips the padding (CPU training speed: README, Performance).

In a padded batch every row is as long as its longest text, and a BERT layer spends nearly all
of its work on token-wise products (the attention's projections, the feed-forward) that padded
positions only waste. On NQ answers, four length-sorted chunks per batch are still 18 % padding
(``benchmarks/profile_step.py``). Here the token-wise parts run on the real tokens alone, packed
into one ``(tokens, hidden)`` matrix; only attention, which needs each text's rows together,
sees the padded ``(batch, length)`` layout, with the padding masked as in transformers' own
pass. The layers' own modules run (weights, LayerNorm).

Dropout, by default (``DualEncoder.fast_dropout = True``), draws each mask from 16 random bits
per element (:func:`keep_mask`): the same distribution as ``bernoulli_``, p rounded to a multiple
of 1/65536, at a fifth of its cost on the CPU, where drawing the masks was a large share of a
training step; attention with dropout then runs written out (scores, softmax, dropout, values)
instead of PyTorch's unfused math kernel. With ``fast_dropout = False`` the masks are drawn over
the padded grid as transformers' pass draws them, keeping the real tokens' rows: the same random
stream, so a seed trains the same towers packed or not (tested: the same losses step by step,
with dropout on). The embeddings' dropout is transformers' own either way.

Encoding in fp32 on an x86 CPU runs the products through oneDNN instead of MKL (:func:`linear`).
oneDNN, which also runs every bf16 product under CPU autocast, compiles a kernel for each new
matrix shape; there the packed row count is rounded up (:func:`round_rows`) so that shapes recur.

Only a plain BERT encoder (``BertModel``: MiniLM, BERT-base, ...) is packed; any other model
runs its own forward.
"""

from __future__ import annotations

import math
import platform
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
    """Where a padded batch's real tokens are: ``rows`` index its flattened ``(B * L)`` grid.

    ``gather`` is ``rows`` followed by ``rows[0]`` repeated up to a rounder row count
    (:func:`round_rows`), or ``rows`` itself: the packed matrices have ``len(gather)`` rows, the
    extra ones copies of a real token that nothing reads back, so they never reach a real row's
    value or gradient (unpacking keeps the first ``len(rows)``).
    """

    rows: torch.Tensor  # flat positions of the real tokens. Shape (tokens,)
    shape: tuple[int, int]  # (batch, length)
    gather: torch.Tensor  # the packed matrices' rows: ``rows``, then filler. Shape (>= tokens,)

    @classmethod
    def of(cls, mask: torch.Tensor, multiple: int = 1) -> Packing:
        """The packing of an attention mask ``(B, L)``, its row count rounded by ``multiple``."""
        rows = mask.reshape(-1).nonzero().squeeze(1)
        extra = round_rows(len(rows), multiple) - len(rows)
        gather = torch.cat([rows, rows[:1].expand(extra)]) if extra else rows
        return cls(rows, tuple(mask.shape), gather)

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """``(B, L, d)`` or ``(B * L, d)`` to the packed ``(len(gather), d)``."""
        return padded.reshape(-1, padded.shape[-1]).index_select(0, self.gather)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """``(len(gather), d)`` to ``(B, L, d)``, zeros at the padding."""
        b, length = self.shape
        grid = packed.new_zeros(b * length, packed.shape[-1])
        real = packed[: len(self.rows)]
        return grid.index_copy(0, self.rows, real).view(b, length, -1)


def round_rows(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``, or of an eighth of ``n``'s power of two
    when that is larger: fewer than ``multiple`` or ``n / 8`` extra rows, and a few dozen
    distinct counts up to 4,096. ``multiple`` 1 keeps ``n``."""
    if multiple <= 1 or n == 0:
        return n
    step = max(multiple, 1 << max(n.bit_length() - 4, 0))
    return -(-n // step) * step


LEVELS = 1 << 16  # keep_mask's resolution: one 16-bit lane per element


def keep_mask(
    shape: tuple[int, ...], p: float, device=None, dtype: torch.dtype = torch.bool
) -> tuple[torch.Tensor, float]:
    """Which elements dropout keeps, from 16 random bits each, and the factor for the kept ones.

    One 64-bit draw of PyTorch's generator gives four 16-bit lanes; an element is dropped when
    its lane falls among the lowest ``round(p * 65536)`` of the 65,536 values, so the drop rate
    is ``p`` rounded to a multiple of 1/65536 (0.1 -> 0.100006) and the factor ``1 / (1 - that)``
    keeps every element's expectation. Seeded by ``torch.manual_seed`` like ``bernoulli_``.

    Returns:
        ``(keep, factor)``: a tensor of ``shape`` and ``dtype``, True (1) where an element is
        kept, and the factor for the kept elements. The comparison writes a 0/1 mask of the
        data's dtype directly; multiplying by it gives the same values as ``torch.where(keep, x,
        0)`` in a third of the time on the CPU (README, Performance).
    """
    n, drop = math.prod(shape), round(p * LEVELS)
    words = torch.randint(-(1 << 63), (1 << 63) - 1, (-(-n // 4),), device=device)
    lanes = words.view(torch.int16)[:n].view(shape)
    keep = torch.empty(shape, dtype=dtype, device=device)
    return torch.ge(lanes, drop - LEVELS // 2, out=keep), LEVELS / (LEVELS - drop)


def _dropout(x: torch.Tensor, dropout: nn.Dropout, packing: Packing, mode: str):
    """``dropout`` on packed rows: ``mode`` "exact" draws the mask transformers' padded pass would
    (PyTorch's CPU dropout fills a tensor of the input's shape with ``bernoulli_(1 - p)``, divides
    it by ``1 - p`` and multiplies: here a tensor of the padded grid's shape, whose rows at the
    real tokens multiply ``x``); "fast" draws one lane per real element (:func:`keep_mask`);
    "off" (evaluation) keeps ``x``.
    """
    p = dropout.p
    if mode == "off" or p == 0:
        return x
    if mode == "fast":  # masks for the real rows; the filler rows' values are never read
        keep, factor = keep_mask((len(packing.rows), x.shape[-1]), p, x.device, x.dtype)
        if len(x) > len(keep):
            keep = torch.cat([keep, keep.new_ones(len(x) - len(keep), x.shape[-1])])
        return x * factor * keep  # as torch.where(keep, x * factor, 0), and faster
    b, length = packing.shape
    noise = x.new_empty(b * length, x.shape[-1]).bernoulli_(1 - p)
    return x * noise.div_(1 - p).index_select(0, packing.gather)


@dataclass(frozen=True)
class _Run:
    """How a pass runs: dropout ``mode`` ("exact", "fast", "off") and oneDNN products."""

    mode: str
    onednn: bool


# oneDNN's matrix product is PyTorch's own (its compiler calls it); measured on x86 CPUs only
HAS_ONEDNN = (
    torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    and platform.machine().lower() in ("x86_64", "amd64")
)


def linear(x: torch.Tensor, layer: nn.Linear, onednn: bool) -> torch.Tensor:
    """``layer(x)`` on packed rows ``(tokens, d)``, through oneDNN's product when ``onednn``.

    Only for a plain fp32 product on the CPU (not under autocast, which picks its own bf16
    product) and only without gradients (this product has no backward). Encoding in fp32 runs
    faster through it than through MKL, PyTorch's default; training did not (README,
    Performance), so training keeps MKL's.
    """
    plain = x.dtype == layer.weight.dtype == torch.float32 and x.device.type == "cpu"
    if onednn and HAS_ONEDNN and plain and not torch.is_grad_enabled():
        if not torch.is_autocast_enabled("cpu"):
            return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "none", [], "")
    return layer(x)


# oneDNN compiles a kernel for each new matrix shape, milliseconds each: the packed row count,
# which changes with every batch, is rounded so that a few shapes recur (:func:`round_rows`)
ONEDNN_ROWS = 64


def rounds_rows(run: _Run) -> bool:
    """Whether to round the packed row count: where the products are oneDNN's, under CPU
    autocast (bf16 training 1.31x faster on a 2-core Xeon with AMX: README, Performance) and in
    fp32 passes without gradients (:func:`linear`: the question flag's detector pass 10% faster
    there). MKL's fp32 products, which training uses, need no rounding."""
    fp32_onednn = run.onednn and not torch.is_grad_enabled()
    return HAS_ONEDNN and (fp32_onednn or torch.is_autocast_enabled("cpu"))


def _residual(block: nn.Module, h: torch.Tensor, x: torch.Tensor, packing: Packing, run: _Run):
    """A BertSelfOutput or BertOutput on packed rows: dense, dropout, LayerNorm of the sum."""
    dense = linear(h, block.dense, run.onednn)
    return block.LayerNorm(_dropout(dense, block.dropout, packing, run.mode) + x)


def written_attention(q, k, v, key_mask: torch.Tensor, scale: float, p: float) -> torch.Tensor:
    """Attention written out, with :func:`keep_mask`'s dropout on the weights at rate ``p``.

    ``softmax(scale * q k^T, masked) v`` as transformers' eager attention computes it (the
    softmax in float32); ``key_mask`` (B, 1, 1, L) is True at the keys every query may read.
    """
    b, heads, length, size = q.shape
    bias = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device)
    bias = bias.masked_fill(~key_mask, float("-inf")).expand(b, heads, 1, length)

    def flat(t: torch.Tensor) -> torch.Tensor:  # (B * heads, L, size)
        return t.reshape(b * heads, length, size)

    # one fused product: the masked, scaled scores
    scores = torch.baddbmm(bias.reshape(b * heads, 1, length), flat(q), flat(k).mT, alpha=scale)
    weights = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
    if p > 0:
        keep, factor = keep_mask(tuple(weights.shape), p, weights.device, weights.dtype)
        weights = weights * keep  # as torch.where(keep, weights, 0), and faster
    context = torch.bmm(weights, flat(v)).view(b, heads, length, size)
    return context * factor if p > 0 else context


def _attention(attention: nn.Module, x: torch.Tensor, packing: Packing, key_mask, run: _Run):
    """BertSelfAttention on packed tokens: the projections packed, the scores per text."""
    heads, size = attention.num_attention_heads, attention.attention_head_size
    b, length = packing.shape

    def per_head(projection: nn.Linear) -> torch.Tensor:  # (B, heads, L, size)
        h = linear(x, projection, run.onednn)
        return packing.unpack(h).view(b, length, heads, size).transpose(1, 2)

    q, k, v = per_head(attention.query), per_head(attention.key), per_head(attention.value)
    p = attention.dropout.p if run.mode != "off" else 0.0
    if run.mode == "fast" and p > 0:
        context = written_attention(q, k, v, key_mask, attention.scaling, p)
    else:
        context = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, dropout_p=p, scale=attention.scaling
        )
    return packing.pack(context.transpose(1, 2).reshape(b, length, heads * size))


def packed_forward(
    encoder: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    capture: int = 0,
    fast_dropout: bool = True,
    onednn: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``encoder``'s last hidden state, computed without the padding.

    Args:
        encoder: a model :func:`can_pack` accepts.
        input_ids: token ids, right-padded. Shape (B, L).
        attention_mask: 1 for real tokens. Shape (B, L).
        capture: also return ``hidden_states[capture]`` (the output of layer ``capture - 1``);
            0 = none.
        fast_dropout: in training, the layers' dropout masks from :func:`keep_mask` instead of
            transformers' ``bernoulli_`` stream (the embeddings' dropout stays transformers').
        onednn: in evaluation without gradients, fp32 products on the CPU through oneDNN
            (:func:`linear`).

    Returns:
        ``(last, middle)``: shape (B, L, hidden) each, zeros at the padding; ``middle`` None
        without ``capture``.
    """
    mask = attention_mask.bool()
    mode = ("fast" if fast_dropout else "exact") if encoder.training else "off"
    run = _Run(mode, onednn and mode == "off")  # oneDNN: encoding only (:func:`linear`)
    packing = Packing.of(mask, ONEDNN_ROWS if rounds_rows(run) else 1)
    x = packing.pack(encoder.embeddings(input_ids=input_ids))
    key_mask = mask[:, None, None, :]  # (B, 1, 1, L): every query ignores the padded keys
    middle = None
    for i, layer in enumerate(encoder.encoder.layer):
        context = _attention(layer.attention.self, x, packing, key_mask, run)
        x = _residual(layer.attention.output, context, x, packing, run)
        inner = layer.intermediate
        h = inner.intermediate_act_fn(linear(x, inner.dense, run.onednn))
        x = _residual(layer.output, h, x, packing, run)
        if i + 1 == capture:
            middle = packing.unpack(x)
    return packing.unpack(x), middle
