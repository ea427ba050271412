"""Batched encoding for evaluation and search: texts in, embeddings out (notebooks 02 and 05).

Texts are sorted by length and batched (less padding), tokenised by a background thread while the
model runs on the previous batches (the tokeniser releases the GIL), and put back in input order.
The thread tokenises :data:`TOKENIZE_BLOCK` batches per call: fewer, larger calls spend less time
per text outside the tokeniser, which also spreads one call over the CPU's cores. Texts are sorted
by characters before they are tokenised, then by token count within each block (less padding).
The blocks are fixed runs of the character-sorted batches, so a run of whole blocks encoded on its
own (:func:`qa_lib.index.encode_pool`) gets exactly the batches the whole list gets. One thread:
on an H200, eight threads were slower than one (2,040 vs 3,329 passages/s).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from qa_lib.batching import collate, sorted_chunks
from qa_lib.question_flag import search_column
from qa_lib.runtime import autocast, prefetched

TOKENIZE_BLOCK = 8  # batches tokenised per tokeniser call (the last block may hold fewer)


def tokenized_batches(model, texts: Sequence[str], max_len: int, batch_size: int) -> Iterator:
    """``(row indices, token batch)`` in longest-first order, prepared by a background thread.

    Each batch holds ``batch_size`` texts (the last one fewer) and equals ``model.tokenize`` of
    its texts. Host memory is pinned on CUDA, for asynchronous copies.
    """
    pin = model.device.type == "cuda"
    pad_id = model.tokenizer.pad_token_id or 0

    def prepare(block: list[list[int]]) -> list[tuple[list[int], dict]]:
        rows = [i for idx in block for i in idx]
        ids = model.tokenizer([texts[i] for i in rows], truncation=True, max_length=max_len)
        ids = ids["input_ids"]
        # within the block, by token count (the characters only guessed it): less padding
        order = sorted(range(len(rows)), key=lambda j: -len(ids[j]))
        prepared, start = [], 0
        for size in map(len, block):
            part = order[start : start + size]
            batch, start = collate([ids[j] for j in part], pad_id), start + size
            batch = {k: v.pin_memory() for k, v in batch.items()} if pin else batch
            prepared.append(([rows[j] for j in part], batch))
        return prepared

    chunks = sorted_chunks([len(t) for t in texts], batch_size, longest_first=True)
    for prepared in prefetched(prepare, _blocks(chunks), workers=1):
        yield from prepared


def _blocks(chunks: list[list[int]]) -> list[list[list[int]]]:
    """Consecutive chunks in blocks of ``TOKENIZE_BLOCK``."""
    return [chunks[s : s + TOKENIZE_BLOCK] for s in range(0, len(chunks), TOKENIZE_BLOCK)]


@torch.inference_mode()
def encode_texts(
    model,
    texts: Sequence[str],
    side: str,
    batch_size: int = 64,
    progress: bool = False,
    search_flag: bool = True,
) -> torch.Tensor:
    """Embed texts with one tower of a dual encoder, in eval mode and the model's precision.

    Args:
        model: a :class:`qa_lib.encoders.DualEncoder`.
        texts: the texts.
        side: "question" (the question tower) or "answer" (the answer tower; its question flag,
            if any, as search uses it: :func:`qa_lib.question_flag.search_column`).
        batch_size: texts per forward pass.
        progress: show a progress bar.
        search_flag: the answer side's flag column as search uses it; False: as trained, ``-p``.

    Returns:
        The embeddings on the CPU, in input order. Shape (len(texts), model.dim).
    """
    from tqdm.auto import tqdm

    texts = list(texts)
    max_len = model.config.max_q_len if side == "question" else model.config.max_a_len
    embed = model.embed_questions if side == "question" else model.embed_answers
    flag = search_flag and side == "answer" and model.has_question_flag
    out = torch.empty(len(texts), model.dim, device=model.device)  # (n, dim), copied once
    was_training = model.training
    model.eval()
    try:
        batches = tokenized_batches(model, texts, max_len, batch_size)
        total = -(-len(texts) // batch_size)
        for idx, batch in tqdm(batches, total=total, desc=f"encode {side}s", disable=not progress):
            with autocast(model.device, model.precision):
                emb = embed(batch).float()
            if flag:
                emb[:, -1] = search_column(emb[:, -1])
            out[torch.tensor(idx, device=model.device)] = emb
    finally:
        model.train(was_training)
    return out.cpu()
