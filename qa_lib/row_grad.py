"""Word-embedding gradients that touch only the rows used (CPU speed: README, Performance).

PyTorch's embedding backward returns a dense gradient: for MiniLM a fresh 30,522 x 384 matrix
(47 MB) of zeros, allocated and filled for every forward call (the question batch and each
length-sorted answer chunk), to add a few thousand token rows. On a CPU each such allocation is
fresh memory from the operating system: on two cores a fill took 52 ms, 13 % of a training
step's CPU time (``benchmarks/profile_step.py --dense-grad``). Here the rows are added straight
into one zeroed gradient buffer that lives as long as the tower. The gradient is the same (the
same rows added; only the order of the floating-point sums can differ). CUDA keeps PyTorch's own
backward: its allocator caches memory, and its ``index_add_`` is not deterministic.
"""

from __future__ import annotations

import torch
from torch import nn


class _AddRows(torch.autograd.Function):
    """``weight[ids]``; the backward adds the output's gradient into ``module``'s buffer."""

    @staticmethod
    def forward(ctx, ids: torch.Tensor, weight: torch.Tensor, module: RowGradEmbedding):
        ctx.save_for_backward(ids)
        ctx.module = module
        return nn.functional.embedding(ids, weight, module.padding_idx)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        module = ctx.module
        ids, rows = ids.reshape(-1), grad.reshape(-1, grad.shape[-1])
        if module.padding_idx is not None:  # as PyTorch's backward: the padding row gets nothing
            keep = ids != module.padding_idx
            ids, rows = ids[keep], rows[keep]
        weight = module.weight
        if weight.grad is None:
            weight.grad = module.zeroed_buffer()
        weight.grad.index_add_(0, ids, rows.to(weight.grad.dtype))
        return None, None, None


class RowGradEmbedding(nn.Embedding):
    """An ``nn.Embedding`` whose CPU backward adds rows into one persistent gradient buffer.

    The buffer becomes ``weight.grad`` when that is None (after ``zero_grad(set_to_none=True)``),
    zeroed in place: no new memory per step. Elsewhere (CUDA, no gradient, options the fast path
    does not cover) it is the plain embedding.
    """

    _buffer: torch.Tensor | None = None

    def zeroed_buffer(self) -> torch.Tensor:
        w = self.weight
        buf = self._buffer
        if buf is None or buf.shape != w.shape or buf.dtype != w.dtype or buf.device != w.device:
            buf = self._buffer = torch.zeros_like(w)
        return buf.zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        fast = (
            self.weight.device.type == "cpu"
            and self.weight.requires_grad
            and torch.is_grad_enabled()
            and not (self.sparse or self.max_norm is not None or self.scale_grad_by_freq)
            and not torch.compiler.is_compiling()
        )
        if not fast:
            return super().forward(ids)
        return _AddRows.apply(ids, self.weight, self)


def use_row_gradients(encoder: nn.Module) -> None:
    """Switch a transformers model's input word embeddings to :class:`RowGradEmbedding`.

    The module, its weight and its state dict stay as they were; a model without an
    ``nn.Embedding`` as input embeddings is left alone.
    """
    embedding = encoder.get_input_embeddings() if hasattr(encoder, "get_input_embeddings") else None
    if type(embedding) is nn.Embedding:
        embedding.__class__ = RowGradEmbedding
