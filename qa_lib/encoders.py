"""Two BERT towers, one for questions and one for answers, compared by a dot product."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from qa_lib.config import PRECISIONS, EncoderConfig, resolve_model_name
from qa_lib.errors import QAError

OPTIONS_FILE = "dual_encoder.json"  # written last: its presence marks a complete save
HEADS_FILE = "heads.safetensors"  # the projections and the answer prior, when there are any
LEGACY_HEADS_FILE = "projection.safetensors"  # what models saved before the answer prior have


def _hub_error(name: str, exc: Exception) -> QAError:
    if os.path.isabs(name) or name.startswith(".") or os.path.exists(name):
        return QAError(f"model {name!r}: not a model folder ({exc}); check the path")
    return QAError(
        f"model {name!r} is not a local folder and could not be loaded from the Hugging Face "
        f"hub (offline, or no such model); pass a local folder, or omit --model to use the "
        f"packaged all-MiniLM-L6-v2"
    )


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' per-weight loading reports and progress bars for a moment."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(name: str):
    """Load a tokenizer from a folder or hub id, with a clear error offline."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise _hub_error(name, exc) from None


def load_backbone(name: str, pretrained: bool = True, overrides: dict | None = None) -> nn.Module:
    """Load one BERT tower: pretrained weights, or random init from the same config.

    Args:
        name: a folder or hub id.
        pretrained: False builds the architecture with fresh random weights.
        overrides: config fields to change (only with ``pretrained=False``), e.g. a tiny size.

    Returns:
        A ``transformers`` model returning ``last_hidden_state``.
    """
    from transformers import AutoConfig, AutoModel

    try:
        with quiet_transformers():
            if pretrained and not overrides:
                return AutoModel.from_pretrained(name, attn_implementation="sdpa")
            config = AutoConfig.from_pretrained(name, **(overrides or {}))
            config._attn_implementation = "sdpa"
            return AutoModel.from_config(config)
    except (OSError, ValueError) as exc:
        raise _hub_error(name, exc) from None


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
        hidden = q_encoder.config.hidden_size
        make_head = (lambda: nn.Linear(hidden, config.proj_dim)) if config.proj_dim else nn.Identity
        self.q_proj = make_head()
        self.a_proj = self.q_proj if config.tied else make_head()
        # the answer prior: a linear question detector on the answer tower's middle layer;
        # zero at the start, so it is undecided and flags nothing
        self.a_prior = nn.Linear(hidden, 1) if self.has_prior else None
        if self.a_prior is not None:
            nn.init.zeros_(self.a_prior.weight)
            nn.init.zeros_(self.a_prior.bias)
        self.tokenizer = tokenizer
        # encoding for search: "auto" = bf16 where the hardware has it (see native_bf16)
        self.precision = "auto"

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
        if config.pooling not in ("mean", "cls"):
            raise QAError(f"unknown pooling {config.pooling!r}: use 'mean' or 'cls'")
        name = resolve_model_name(config.model)
        overrides = dict(config.model_overrides)
        torch.manual_seed(seed)
        q_encoder = load_backbone(name, config.pretrained, overrides)
        a_encoder = q_encoder
        if not config.tied:
            a_encoder = load_backbone(name, config.pretrained, overrides)
        return cls(config, q_encoder, a_encoder, load_tokenizer(name))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def has_prior(self) -> bool:
        """Whether the answer prior is on: ``answer_prior``, separate towers, cosine scores.

        A tied encoder has no answer-only part; with raw dot products a flag's -1 would not be
        the whole range of a score.
        """
        return self.config.answer_prior and not self.config.tied and self.config.normalize

    @property
    def dim(self) -> int:
        """Embedding size (one more than the towers' output with the answer prior)."""
        return (self.config.proj_dim or self.q_encoder.config.hidden_size) + self.has_prior

    # ------------------------------------------------------------------ differentiable path
    def tokenize(self, texts: Sequence[str], max_len: int) -> dict[str, torch.Tensor]:
        """Tokenise and pad to the longest text (at most ``max_len`` tokens)."""
        return _tokenize(self.tokenizer, texts, max_len)

    def _pooled(self, tower: str, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One tower's pooled output, and for the answer prior its pooled middle layer.

        Returns:
            ``(pooled, form)``: shape (batch, hidden) each; ``form`` is None without a prior.
        """
        encoder = self.q_encoder if tower == "question" else self.a_encoder
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        form_needed = self.has_prior and tower == "answer"
        out = encoder(**batch, output_hidden_states=form_needed)
        mask = batch["attention_mask"]
        pooled = pool(out.last_hidden_state, mask, self.config.pooling)
        if not form_needed:
            return pooled, None
        return pooled, pool(out.hidden_states[self.prior_layer], mask, "mean")

    def _head(self, tower: str, pooled: torch.Tensor, form: torch.Tensor | None) -> torch.Tensor:
        """Pooled vectors to embeddings: projection, normalisation, the answer prior column."""
        emb = (self.q_proj if tower == "question" else self.a_proj)(pooled)
        if self.config.normalize:
            emb = nn.functional.normalize(emb.float(), dim=-1)
        if not self.has_prior:
            return emb
        # score = q · a + prior(a): questions carry a constant 1 where answers carry the prior
        extra = torch.ones_like(emb[:, :1]) if tower == "question" else self._prior(form)
        return torch.cat([emb.float(), extra.float()], dim=-1)

    def _embed(self, tower: str, batch: dict) -> torch.Tensor:
        return self._head(tower, *self._pooled(tower, batch))

    @property
    def prior_layer(self) -> int:
        """The hidden layer the answer prior reads (0 = the token embeddings)."""
        layers = self.a_encoder.config.num_hidden_layers
        return max(1, min(layers, round(self.config.prior_depth * layers)))

    def _prior(self, form: torch.Tensor) -> torch.Tensor:
        """The answer prior, in [-1, 0]: minus the probability that the text is a question.

        A linear detector on the answer tower's mean-pooled middle layer, where the surface form
        of a text (an interrogative, word order) is still plain; the last layer's meaning-based
        vectors tell questions from answers much worse. It sends no gradients back: the towers
        are trained by the in-batch loss alone. Shape (batch, 1).
        """
        with torch.autocast(form.device.type, enabled=False):  # fp32: bf16 rounds p to 1 early
            return -torch.sigmoid(self.a_prior(form.detach().float()))

    def embed_questions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Question embeddings (with gradients). Shape (batch, dim)."""
        return self._embed("question", batch)

    def embed_answers(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Answer embeddings (with gradients). Shape (batch, dim)."""
        return self._embed("answer", batch)

    def embed_echoes(self, q_batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Questions embedded by the answer tower: the echo the training must push down.

        With the answer prior, only its detector learns from echoes, so the tower runs without
        gradients and without dropout (the towers then train exactly as without echoes);
        without it, this is :meth:`embed_answers` (the echo negative trains the towers).
        Shape (batch, dim).
        """
        if not self.has_prior:
            return self.embed_answers(q_batch)
        was_training = self.a_encoder.training
        self.a_encoder.eval()  # no dropout: the towers' random stream is that of a run without
        try:
            with torch.no_grad():
                pooled, form = self._pooled("answer", q_batch)
        finally:
            self.a_encoder.train(was_training)
        return self._head("answer", pooled, form)

    def forward(self, q_batch: dict, a_batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(q_emb, a_emb)``, shapes (batch, dim) and (n_answers, dim)."""
        return self.embed_questions(q_batch), self.embed_answers(a_batch)

    # ------------------------------------------------------------------ inference
    def _batches(self, texts: Sequence[str], max_len: int, batch_size: int) -> Iterator:
        """Length-sorted tokenised batches, prepared by a background thread.

        The tokeniser releases the GIL, so the next batches are tokenised while the model runs
        on this one (host memory is pinned on CUDA for asynchronous copies). One thread: on an
        H200, eight threads were slower than one (2,040 vs 3,329 passages/s).
        """
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        pin = self.device.type == "cuda"

        def prepare(idx: list[int]) -> tuple[list[int], dict]:
            batch = self.tokenize([texts[i] for i in idx], max_len)
            return idx, {k: v.pin_memory() for k, v in batch.items()} if pin else batch

        chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        return _prefetched(prepare, chunks, workers=1)

    @torch.inference_mode()
    def _encode(self, texts, tower: str, batch_size: int, progress: bool) -> torch.Tensor:
        from tqdm.auto import tqdm

        texts = list(texts)
        max_len = self.config.max_q_len if tower == "question" else self.config.max_a_len
        embed = self.embed_questions if tower == "question" else self.embed_answers
        out = torch.empty(len(texts), self.dim, device=self.device)  # (n, dim), copied once
        was_training = self.training
        self.eval()
        try:
            total = -(-len(texts) // batch_size)
            batches = self._batches(texts, max_len, batch_size)
            bar = tqdm(batches, total=total, desc=f"encode {tower}s", disable=not progress)
            for idx, batch in bar:
                with _autocast(self.device, self.precision):
                    emb = embed(batch).float()
                if tower == "answer" and self.has_prior:
                    emb[:, -1] = harden_prior(emb[:, -1])
                out[torch.tensor(idx, device=self.device)] = emb
        finally:
            self.train(was_training)
        return out.cpu()

    def encode_questions(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = False
    ) -> torch.Tensor:
        """Embed questions with the question tower, in length-sorted batches.

        Returns:
            ``q_emb`` on the CPU, in input order. Shape (len(texts), dim).
        """
        return self._encode(texts, "question", batch_size, progress)

    def encode_answers(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = False
    ) -> torch.Tensor:
        """Embed answers with the answer tower, in length-sorted batches.

        Returns:
            ``a_emb`` on the CPU, in input order. Shape (len(texts), dim).
        """
        return self._encode(texts, "answer", batch_size, progress)

    def score(self, questions: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
        """Score every question against every answer.

        Returns:
            ``scores[i, j]`` = q_emb[i] · a_emb[j]. Shape (len(questions), len(answers)).
        """
        return self.encode_questions(questions) @ self.encode_answers(answers).T

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write both towers, the tokenizer and the options, atomically.

        Everything is written to a temporary sibling folder, which then replaces
        ``directory`` in one rename, so a crash never leaves a half-written model.

        Returns:
            The folder.
        """
        from safetensors.torch import save_file

        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            towers = (
                {"encoder": self.q_encoder}
                if self.config.tied
                else {"question_encoder": self.q_encoder, "answer_encoder": self.a_encoder}
            )
            with quiet_transformers():
                for sub, encoder in towers.items():
                    encoder.save_pretrained(tmp / sub)
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            kinds = ("q_proj", "a_prior") if self.config.tied else ("q_proj", "a_proj", "a_prior")
            heads = {k: v for k, v in self.state_dict().items() if k.split(".")[0] in kinds}
            if heads:
                save_file(
                    {k: v.contiguous().cpu() for k, v in heads.items()},
                    str(tmp / HEADS_FILE),
                )
            options = {**asdict(self.config), "model_overrides": dict(self.config.model_overrides)}
            (tmp / OPTIONS_FILE).write_text(json.dumps(options, indent=2))
            _replace_dir(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | None = None) -> DualEncoder:
        """Load a model written by :meth:`save`.

        Raises:
            QAError: the folder is missing or holds no complete saved model.
        """
        from safetensors.torch import load_file
        from transformers import AutoModel

        folder = Path(directory)
        if not (folder / OPTIONS_FILE).is_file():
            raise QAError(
                f"{folder}: no saved dual encoder here (missing {OPTIONS_FILE}); pass a folder "
                f"written by 'qa_lib train' or DualEncoder.save"
            )
        options = json.loads((folder / OPTIONS_FILE).read_text())
        options["model_overrides"] = tuple(options.get("model_overrides", {}).items())
        options.setdefault("answer_prior", False)  # saved before the option existed: none
        config = EncoderConfig(**options)
        with quiet_transformers():
            if config.tied:
                q_encoder = a_encoder = AutoModel.from_pretrained(folder / "encoder")
            else:
                q_encoder = AutoModel.from_pretrained(folder / "question_encoder")
                a_encoder = AutoModel.from_pretrained(folder / "answer_encoder")
        model = cls(config, q_encoder, a_encoder, load_tokenizer(str(folder / "tokenizer")))
        if config.proj_dim or model.has_prior:
            heads = folder / HEADS_FILE
            if not heads.is_file() and (folder / LEGACY_HEADS_FILE).is_file():
                heads = folder / LEGACY_HEADS_FILE
            if not heads.is_file():
                raise QAError(
                    f"{folder}: {HEADS_FILE} is missing (the projections or the answer prior); "
                    f"copy the whole folder written by DualEncoder.save"
                )
            model.load_state_dict(load_file(str(heads)), strict=False)
        return model.to(device) if device else model


def harden_prior(prior: torch.Tensor) -> torch.Tensor:
    """The answer prior as search uses it: -1 for a text the detector calls a question, else 0.

    Training uses the smooth prior (minus the detector's probability) for the detector's loss;
    for ranking, a flag is better: a text flagged as a question loses 1, the whole range of a
    cosine, so it ranks below every real answer, and the answers themselves keep the order of
    the towers' cosines exactly, without the detector's small doubts added to it.
    """
    return -(prior < -0.5).to(prior.dtype)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an existing ``dst`` is replaced only once ``src`` is complete."""
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def _tokenize(tokenizer, texts: Sequence[str], max_len: int) -> dict[str, torch.Tensor]:
    batch = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt"
    )
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}


def _prefetched(fn: Callable, items: Sequence, workers: int = 1) -> Iterator:
    """Yield ``fn(item)`` in order while background threads compute the next few.

    At most ``2 * workers`` results are in flight, so memory stays bounded on a large corpus.
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def recover_interrupted_saves(folder: str | os.PathLike) -> None:
    """Tidy up after a :meth:`DualEncoder.save` that a crash interrupted.

    Half-written temporary folders are removed; a model caught between the two renames of
    the swap (the old copy moved aside, the new one not yet in place) is put back.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    for tmp in folder.glob(".*.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for old in folder.glob(".*.old-*"):
        target = folder / old.name[1:].rsplit(".old-", 1)[0]
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, target)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware, so bf16 autocast pays off.

    CUDA GPUs from Ampere on; x86 CPUs with AVX512-BF16 or AMX (recent Xeon and EPYC). Elsewhere
    (most laptops, a Colab T4) bf16 would be emulated and slower than fp32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        cpu = torch.cpu
        try:  # private helpers, absent on some builds: then fp32
            return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
        except AttributeError:
            return False
    return False


def use_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Resolve ``precision`` ("auto", "fp32" or "bf16") for ``device``."""
    if precision not in PRECISIONS:
        raise QAError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return native_bf16(device) if precision == "auto" else precision == "bf16"


def _autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast where ``precision`` resolves to bf16; a no-op context otherwise.

    Weights, gradients and optimizer state stay fp32; the matrix products run in bf16.
    """
    if use_bf16(device, precision):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)
