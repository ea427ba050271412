"""Two BERT towers, one for questions and one for answers, compared by a dot product (notebook 02).

Each tower turns a token batch into one vector: the backbone's token vectors, pooled (mean or CLS),
optionally projected, normalised for cosine scores, and on the answer side followed by the question
flag's column (:mod:`qa_lib.question_flag`). ``embed_*`` is the differentiable path on token
batches (training); ``encode_*`` embeds texts for evaluation and search (:mod:`qa_lib.inference`).
On the CPU a plain BERT tower runs without its padding (:mod:`qa_lib.packed`) and its word
embeddings' gradient touches only the rows used (:mod:`qa_lib.row_grad`): the same numbers, less
work.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from qa_lib.config import EncoderConfig, resolve_model_name
from qa_lib.errors import QAError
from qa_lib.hub import load_backbone, load_tokenizer
from qa_lib.inference import encode_texts
from qa_lib.packed import can_pack, packed_forward
from qa_lib.question_flag import QuestionFlag, flag_features, flag_layer
from qa_lib.row_grad import use_row_gradients
from qa_lib.saving import read_heads, read_options, read_towers, save_model

POOLINGS = ("mean", "cls")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Turn token vectors into one vector per text.

    Args:
        hidden: token vectors. Shape (batch, seq, hidden).
        attention_mask: 1 for real tokens, 0 for padding. Shape (batch, seq).
        pooling: "cls" takes the first token; "mean" averages the real tokens.

    Returns:
        One vector per text. Shape (batch, hidden).
    """
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    raise QAError(f"unknown pooling {pooling!r}: use 'mean' or 'cls'")


def tokenize(tokenizer, texts: Sequence[str], max_len: int) -> dict[str, torch.Tensor]:
    """Tokenise and pad to the longest text (at most ``max_len`` tokens)."""
    batch = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt"
    )
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}


@contextmanager
def first_layers(encoder: nn.Module, n: int) -> Iterator[None]:
    """Run only the first ``n`` transformer layers of a BERT encoder inside the block.

    Its ``hidden_states[n]`` is then exactly that of a full run, for less than the full cost.
    """
    layers = encoder.encoder.layer
    encoder.encoder.layer = layers[:n]
    try:
        yield
    finally:
        encoder.encoder.layer = layers


@contextmanager
def layer_output(encoder: nn.Module, n: int) -> Iterator[list[torch.Tensor]]:
    """Capture ``hidden_states[n]`` (n >= 1: the output of transformer layer ``n - 1``) of the
    forward passes run inside the block, into the yielded list.

    The same tensor as ``output_hidden_states=True`` returns, without collecting every layer's.
    """
    captured: list[torch.Tensor] = []
    hook = encoder.encoder.layer[n - 1].register_forward_hook(
        lambda _module, _args, out: captured.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        yield captured
    finally:
        hook.remove()


def projection_head(hidden: int, config: EncoderConfig) -> nn.Module:
    """One tower's projection: ``Linear(hidden, proj_dim)``, or the identity without ``proj_dim``.

    One that keeps the towers' size starts as the identity, so fine-tuning starts from the
    pretrained towers' scores instead of a random map of them; other sizes start at random.
    """
    if not config.proj_dim:
        return nn.Identity()
    head = nn.Linear(hidden, config.proj_dim)
    if config.proj_dim == hidden:
        with torch.no_grad():
            head.weight.copy_(torch.eye(hidden))
            head.bias.zero_()
    return head


class DualEncoder(nn.Module):
    """A question tower and an answer tower whose embeddings are compared by a dot product.

    Build with :meth:`from_config`; reload a saved one with :meth:`load`.
    """

    def __init__(
        self, config: EncoderConfig, q_encoder: nn.Module, a_encoder: nn.Module, tokenizer
    ):
        super().__init__()
        self.config = config
        self.q_encoder = q_encoder
        self.a_encoder = q_encoder if config.tied else a_encoder
        for encoder in (self.q_encoder, self.a_encoder):
            use_row_gradients(encoder)  # CPU: no dense zero gradient per forward call
        self.set_attention_dropout(config.attention_dropout)
        hidden = q_encoder.config.hidden_size
        self.q_proj = projection_head(hidden, config)
        shared = config.tied or config.shared_proj
        self.a_proj = self.q_proj if shared else projection_head(hidden, config)
        flag = QuestionFlag(hidden, config.flag_features) if config.has_question_flag else None
        self.question_flag = flag
        self.tokenizer = tokenizer
        # encoding for search: "auto" = bf16 where the hardware has it (qa_lib.runtime)
        self.precision = "auto"
        self.packed = True  # on the CPU, run the towers without their padding (qa_lib.packed)
        self.fast_dropout = True  # packed: dropout masks from qa_lib.packed.keep_mask (faster,
        # the same distribution; False = transformers' bernoulli_ stream, as the padded pass)
        self.onednn = True  # packed, encoding in fp32 on an x86 CPU: oneDNN's products, not MKL's
        self.compiled = False  # set by qa_lib.train.prepare_model with TrainConfig.compile

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(
        cls, config: EncoderConfig | None = None, seed: int = 0, **changes
    ) -> DualEncoder:
        """Build both towers.

        Args:
            config: the encoder options; None = defaults (packaged MiniLM, mean pooling, cosine).
            seed: seeds random init (towers with ``pretrained=False`` and projections).
            **changes: EncoderConfig fields to replace, e.g. ``pretrained=False``.

        Returns:
            The dual encoder, on the CPU, in training mode.
        """
        config = replace(config or EncoderConfig(), **changes)
        if config.pooling not in POOLINGS:
            raise QAError(f"unknown pooling {config.pooling!r}: use 'mean' or 'cls'")
        if config.shared_proj and not config.proj_dim:
            raise QAError("shared_proj=True shares a projection: set proj_dim too (e.g. 384)")
        name = resolve_model_name(config.model)
        overrides = dict(config.model_overrides)
        torch.manual_seed(seed)
        q_encoder = load_backbone(name, config.pretrained, overrides)
        a_encoder = q_encoder
        if not config.tied:
            a_encoder = load_backbone(name, config.pretrained, overrides)
        return cls(config, q_encoder, a_encoder, load_tokenizer(name))

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | None = None) -> DualEncoder:
        """Load a model written by :meth:`save` (also one saved by an older qa_lib).

        Raises:
            QAError: the folder is missing or holds no complete saved model.
        """
        folder = Path(directory)
        config = read_options(folder)
        model = cls(config, *read_towers(folder, config))
        heads = read_heads(folder, config)
        if heads is not None:
            model.load_state_dict(heads, strict=False)
        return model.to(device) if device else model

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the model to ``directory`` atomically (:func:`qa_lib.saving.save_model`)."""
        return save_model(self, directory)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def has_question_flag(self) -> bool:
        """Whether the answer side carries the question flag (see EncoderConfig)."""
        return self.config.has_question_flag

    @property
    def dim(self) -> int:
        """Embedding size (one more than the towers' output with the question flag)."""
        return (self.config.proj_dim or self.q_encoder.config.hidden_size) + self.has_question_flag

    @property
    def flag_layer(self) -> int:
        """The answer tower's hidden layer the question flag reads (0 = the token embeddings)."""
        return flag_layer(self.a_encoder.config.num_hidden_layers, self.config.flag_depth)

    def set_attention_dropout(self, p: float | None) -> None:
        """Dropout on both towers' attention weights in training mode; None = each tower's own.

        Raises:
            QAError: ``p`` is outside [0, 1).
        """
        if p is not None and not 0 <= p < 1:
            raise QAError(f"attention dropout {p}: use a value in [0, 1), or None for the towers'")
        for encoder in (self.q_encoder, self.a_encoder):
            own = getattr(encoder.config, "attention_probs_dropout_prob", None)
            value = own if p is None else p
            for module in encoder.modules():
                is_attention = type(module).__name__.endswith("SelfAttention")
                if value is not None and is_attention and hasattr(module, "dropout"):
                    module.dropout.p = value

    # ------------------------------------------------------------------ differentiable path
    def tokenize(self, texts: Sequence[str], max_len: int) -> dict[str, torch.Tensor]:
        """Tokenise and pad to the longest text (at most ``max_len`` tokens)."""
        return tokenize(self.tokenizer, texts, max_len)

    def _run_tower(self, side: str, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One tower's pooled output and, for the question flag, its pooled middle layer.

        Returns:
            ``(pooled, middle)``: shape (batch, hidden) each; ``middle`` is None without a flag.
        """
        encoder = self.q_encoder if side == "question" else self.a_encoder
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        mask = batch["attention_mask"]
        flagged = self.has_question_flag and side == "answer"
        last, middle = self._backbone(encoder, batch, self.flag_layer if flagged else 0)
        pooled = pool(last, mask, self.config.pooling)
        if not flagged:
            return pooled, None
        return pooled, flag_features(middle, mask, self.config.flag_features)

    def _backbone(self, encoder: nn.Module, batch: dict, capture: int = 0):
        """``(last hidden state, hidden_states[capture] or None)`` of one tower on a batch.

        On the CPU a plain BERT runs without its padding (:mod:`qa_lib.packed`), elsewhere
        transformers' own forward does. A compiled tower (``TrainConfig.compile``) runs its own
        compiled forward, asked for every hidden state: a hook would break its graph.
        """
        if self.compiled:
            out = encoder(**batch, output_hidden_states=bool(capture))
            return out.last_hidden_state, out.hidden_states[capture] if capture else None
        if self.packed and encoder.device.type == "cpu" and can_pack(encoder):
            ids, mask = batch["input_ids"], batch["attention_mask"]
            return packed_forward(encoder, ids, mask, capture, self.fast_dropout, self.onednn)
        if not capture:
            return encoder(**batch).last_hidden_state, None
        with layer_output(encoder, capture) as middle:
            out = encoder(**batch)
        return out.last_hidden_state, middle[0]

    def _finish(self, side: str, pooled: torch.Tensor, middle: torch.Tensor | None):
        """Pooled vectors to embeddings: projection, normalisation, the question flag column."""
        emb = (self.q_proj if side == "question" else self.a_proj)(pooled)
        if self.config.normalize:
            emb = nn.functional.normalize(emb.float(), dim=-1)
        if not self.has_question_flag:
            return emb
        # score = q · a + flag(a): questions carry a constant 1 where answers carry the flag
        extra = torch.ones_like(emb[:, :1]) if side == "question" else self.question_flag(middle)
        return torch.cat([emb.float(), extra.float()], dim=-1)

    def embed_questions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Question embeddings (with gradients). Shape (batch, dim)."""
        return self._finish("question", *self._run_tower("question", batch))

    def embed_answers(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Answer embeddings (with gradients). Shape (batch, dim)."""
        return self._finish("answer", *self._run_tower("answer", batch))

    def flag_columns(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The question flag's training column (``-p``) of texts read by the answer tower.

        Only the detector learns from it: the tower runs without gradients and without dropout
        (the towers train exactly as without it, their random stream untouched), and only up to
        the layer the flag reads (:attr:`flag_layer`), since nothing above it is used.

        Args:
            batch: a token batch (the echoes of questions, the form views).

        Returns:
            Shape (batch,), fp32, with gradients for the detector only.
        """
        if not self.has_question_flag:
            raise QAError("this model has no question flag (tied, raw dot products, or turned off)")
        was_training = self.a_encoder.training
        self.a_encoder.eval()
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        try:
            with torch.no_grad(), first_layers(self.a_encoder, self.flag_layer):
                last, _ = self._backbone(self.a_encoder, batch)  # its last layer is the flag's
        finally:
            self.a_encoder.train(was_training)
        middle = flag_features(last, batch["attention_mask"], self.config.flag_features)
        return self.question_flag(middle)[:, 0]

    def forward(self, q_batch: dict, a_batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(q_emb, a_emb)``, shapes (batch, dim) and (n_answers, dim)."""
        return self.embed_questions(q_batch), self.embed_answers(a_batch)

    # ------------------------------------------------------------------ texts in, vectors out
    def encode_questions(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = False
    ) -> torch.Tensor:
        """``q_emb`` of texts, on the CPU, in input order. Shape (len(texts), dim)."""
        return encode_texts(self, texts, "question", batch_size, progress)

    def encode_answers(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = False
    ) -> torch.Tensor:
        """``a_emb`` of texts (the flag made -1 or 0), on the CPU. Shape (len(texts), dim)."""
        return encode_texts(self, texts, "answer", batch_size, progress)

    def question_probability(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """The question flag's probability that each text is a question. Shape (len(texts),).

        Raises:
            QAError: the model has no question flag.
        """
        if not self.has_question_flag:
            raise QAError("this model has no question flag (tied, raw dot products, or turned off)")
        return -encode_texts(self, texts, "answer", batch_size, search_flag=False)[:, -1]

    def score(self, questions: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
        """Score every question against every answer.

        Returns:
            ``scores[i, j]`` = q_emb[i] · a_emb[j]. Shape (len(questions), len(answers)).
        """
        return self.encode_questions(questions) @ self.encode_answers(answers).T
