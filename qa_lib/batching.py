"""Token batches for training: tokenise once, pad per batch, order the rows (notebook 04)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass
class TokenizedPairs:
    """Pairs tokenised once, unpadded; batches are padded on the fly."""

    q_tokens: list[list[int]]  # token ids of each question
    a_tokens: list[list[int]]  # token ids of each answer
    answer_keys: torch.Tensor  # one key per row; equal keys = equal answer text. Shape (n,)
    pad_id: int
    negatives: list[list[int]] | None = None  # per row: rows whose answers are hard negatives


def tokenize_pairs(model, pairs) -> TokenizedPairs:
    """Tokenise every question and answer once (truncated to the model's lengths, not padded).

    Args:
        model: a dual encoder (its ``tokenizer`` and ``config.max_q_len``/``max_a_len``).
        pairs: a :class:`qa_lib.data.Pairs`.
    """
    tok, config = model.tokenizer, model.config
    q_tokens = tok(pairs.questions, truncation=True, max_length=config.max_q_len)["input_ids"]
    a_tokens = tok(pairs.answers, truncation=True, max_length=config.max_a_len)["input_ids"]
    index: dict[str, int] = {}
    answer_keys = torch.tensor([index.setdefault(a, len(index)) for a in pairs.answers])
    return TokenizedPairs(q_tokens, a_tokens, answer_keys, tok.pad_token_id or 0)


def collate(tokens: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad token-id lists to the longest one.

    Returns:
        ``input_ids`` and ``attention_mask``. Shape (len(tokens), longest).
    """
    longest = max(len(x) for x in tokens)
    input_ids = torch.full((len(tokens), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(tokens), longest), dtype=torch.long)
    for row, x in enumerate(tokens):
        input_ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def sorted_chunks(
    lengths: Sequence[int], size: int, longest_first: bool = False
) -> list[list[int]]:
    """Row indices sorted by length and cut into chunks of ``size`` (less padding per chunk).

    Used wherever texts are batched: training chunks, gradient caching, encoding for search.
    Rows of equal length keep their input order.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=longest_first)
    return [order[s : s + size] for s in range(0, len(order), size)]


def embed_in_chunks(
    embed: Callable[[dict], torch.Tensor], tokens: Sequence[list[int]], pad_id: int, chunks: int
) -> torch.Tensor:
    """Embed texts in length-sorted chunks so short texts are not padded to the longest.

    The result is the same as one padded batch (same rows, same order, same gradients);
    only the padding that is never attended to is skipped.

    Returns:
        Embeddings in input order. Shape (len(tokens), dim).
    """
    if chunks <= 1 or len(tokens) < 2 * chunks:
        return embed(collate(tokens, pad_id))
    plan = sorted_chunks([len(x) for x in tokens], -(-len(tokens) // chunks))
    parts = [embed(collate([tokens[i] for i in chunk], pad_id)) for chunk in plan]
    order = [i for chunk in plan for i in chunk]
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return torch.cat(parts)[inverse.to(parts[0].device)]


def candidate_rows(data: TokenizedPairs, idx: list[int]) -> list[int]:
    """The rows whose answers are a batch's candidates: its own rows, then their hard negatives."""
    if not data.negatives:
        return list(idx)
    return list(idx) + [j for i in idx for j in data.negatives[i]]


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, groups: Sequence[str] | None = None
) -> list[list[int]]:
    """Shuffle rows (seeded by seed and epoch) into batches; a last batch of one is dropped.

    With ``groups`` (one label per row: an article, a topic), batches are topic-aware: the
    groups are shuffled, each group's rows stay together (in shuffled order), the batches are
    cut from that sequence and then shuffled. A batch then holds one or a few groups, so its
    in-batch negatives are answers on the same topic: the ones a search over that topic must
    tell apart, instead of random answers that are easy to reject.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = _grouped_order(n, groups, rng) if groups is not None else list(range(n))
    if groups is None:
        rng.shuffle(order)
    batches = [order[s : s + batch_size] for s in range(0, n, batch_size)]
    if groups is not None:
        rng.shuffle(batches)
    return [b for b in batches if len(b) > 1]


def _grouped_order(n: int, groups: Sequence[str], rng: random.Random) -> list[int]:
    """The rows, group by group: the groups in shuffled order, each group's rows shuffled."""
    rows_of: dict[str, list[int]] = {}
    for row in range(n):
        rows_of.setdefault(groups[row], []).append(row)
    keys = list(rows_of)
    rng.shuffle(keys)
    order = []
    for key in keys:
        rows = rows_of[key]
        rng.shuffle(rows)
        order += rows
    return order
