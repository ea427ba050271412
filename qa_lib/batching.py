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
    views: list[list[int]] | None = None  # per row: one more text for the question flag's detector
    view_is_question: torch.Tensor | None = None  # per row: whether that text is a question. (n,)


ANSWER_CUTS = (128, 256)  # the answer lengths measured (README, Results: SQuAD at 256)
LONG_SHARE = 0.25  # auto_answer_length: the share of passages past the short cut that moves to 256


def auto_answer_length(
    tokenizer, passages: Sequence[str], sample: int = 5000, seed: int = 0
) -> int:
    """The answer-token cut for these passages: 128, or 256 when over a quarter of them run past
    128 tokens (SQuAD's paragraphs, MedQuAD's answers; not NQ's answers nor the embedded set's).

    On SQuAD's validation split 256 gained 3.3 points of Recall@1 over 128 for 1.6x the training
    time (README, Results); where nearly every passage fits in 128 tokens, 256 only costs time.
    At most ``sample`` passages are tokenised (a seeded sample).
    """
    short, longer = ANSWER_CUTS
    texts = list(passages)
    if len(texts) > sample:
        texts = random.Random(seed).sample(texts, sample)
    if not texts:
        return short
    ids = tokenizer(texts, truncation=True, max_length=short + 1)["input_ids"]
    return longer if sum(len(x) > short for x in ids) > LONG_SHARE * len(ids) else short


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
    data = TokenizedPairs(q_tokens, a_tokens, answer_keys, tok.pad_token_id or 0)

    def styled(style) -> list[list[int]]:  # the questions in another form, tokenised
        texts = [style(q) for q in pairs.questions]
        return tok(texts, truncation=True, max_length=config.max_q_len)["input_ids"]

    stops = set(tok.convert_tokens_to_ids(list(SENTENCE_ENDS)))
    data.views, data.view_is_question = form_views(
        q_tokens, a_tokens, styled(restyle_question), styled(full_stop), stops
    )
    return data


VIEW_KINDS = (
    "answer sentence as long as the question",
    "question in the other style",
    "question, then its answer",
    "context, then question",
    "question ending in a full stop",
)


def restyle_question(question: str) -> str:
    """The question written in the other style, so case and "?" cannot stand in for its form.

    A question with a "?" ("Who wrote Hamlet?") becomes a bare one, lower-cased without question
    marks ("who wrote hamlet"); one without, as NQ's queries are, becomes a written one ("Who
    wrote hamlet?"). Either way the detector sees the data's questions in the style they lack.
    """
    bare = question.lower().replace("?", "").strip()
    if not bare:
        return question
    return bare if "?" in question else bare[0].upper() + bare[1:] + "?"


def full_stop(question: str) -> str:
    """A written question closed by a full stop instead of its "?" ("Who wrote Hamlet."): some
    datasets' questions end so, and a detector that read a closing "." as an answer's would miss
    them. A question without a "?" is returned written instead (:func:`restyle_question`): a full
    stop after a bare query like NQ's ("scott a surname of scottish origin.") leaves no form that
    tells it from a short statement, and teaching the detector otherwise flags such answers."""
    if "?" not in question:
        return restyle_question(question)
    return question.rstrip(" ?\t\n") + "."


VIEW_EXTRA = 16  # tokens of an answer that the FAQ-style and context views borrow
SENTENCE_ENDS = (".", "!", ";")  # tokens that end an answer's sentences


def matched_sentence(answer: list[int], length: int, stops: set[int]) -> list[int]:
    """The answer's sentence closest to ``length`` tokens, ``[CLS] ... . [SEP]``: a complete
    statement as long as a question (the first of equally close ones).

    Sentences of one or two tokens (list markers, initials) are skipped. An answer without a
    complete sentence of at most ``2 * length`` tokens is cut to that and closed with the last
    sentence end in it (or ends cut, when there is none).
    """
    body, limit = answer[1:-1], 2 * length
    ends = [k for k, t in enumerate(body) if t in stops]
    spans = [(a, b) for a, b in zip([-1, *ends], ends) if 3 <= b - a and b - a + 2 <= limit]
    if spans:
        a, b = min(spans, key=lambda s: abs(s[1] - s[0] + 2 - length))
        return answer[:1] + body[a + 1 : b + 1] + answer[-1:]
    cut = body[: max(limit - 3, 1)]
    close = next((t for t in reversed(body) if t in stops), None)
    return answer[:1] + cut + ([close] if close is not None else []) + answer[-1:]


def form_views(
    q_tokens, a_tokens, restyled_tokens, stopped_tokens, stops: set[int] = frozenset()
) -> tuple[list[list[int]], torch.Tensor]:
    """One text per row that length alone cannot label, for the question flag's detector.

    Row ``i`` gets the view ``VIEW_KINDS[i % 5]``, so every batch holds all five:

    - a sentence of the answer as long as its question (:func:`matched_sentence`): a short,
      complete statement, often on the question's own topic ("Rotor syndrome is a rare
      condition."), the kind of answer a detector that reads length or topic would flag;
    - the question in the other style (:func:`restyle_question`): written questions bare,
      lower-cased without "?" (NQ's style), and bare ones written, capitalised with "?", so
      neither case nor punctuation labels a question;
    - a question, then its answer: FAQ style, the question restated before the answer (an answer
      that contains a question);
    - context, then a question: a sentence of another answer before the question (a question
      longer than many answers);
    - a written question closed by a full stop instead of "?" (:func:`full_stop`), so a closing
      "." does not label an answer either (a bare question gets its written style again).

    The detector learns that a text which ends in a statement is an answer and one that ends in
    a question is a question, whatever its length or punctuation.

    Args:
        q_tokens: token ids of the questions, ``[CLS] ... [SEP]``.
        a_tokens: token ids of the answers.
        restyled_tokens: token ids of the questions in the other style.
        stopped_tokens: token ids of the questions closed by a full stop.
        stops: the token ids that end a sentence (:data:`SENTENCE_ENDS`).

    Returns:
        ``(views, is_question)``: token ids per row, and the label of each. Shapes (n,), (n,).
    """
    n, views, labels = len(q_tokens), [], []
    for i, (q, a) in enumerate(zip(q_tokens, a_tokens)):
        kind, other = i % len(VIEW_KINDS), a_tokens[(i + 1) % n]
        if kind == 0:  # [CLS] a sentence. [SEP]
            view = matched_sentence(a, len(q), stops)
        elif kind == 1:
            view = restyled_tokens[i]
        elif kind == 2:  # [CLS] question answer... [SEP]
            view = q[:-1] + a[1:-1][:VIEW_EXTRA] + a[-1:]
        elif kind == 3:  # [CLS] context... question [SEP]
            view = other[:-1][: 1 + VIEW_EXTRA] + q[1:]
        else:
            view = stopped_tokens[i]
        views.append(view)
        labels.append(kind in (1, 3, 4))
    return views, torch.tensor(labels, dtype=torch.bool)


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
