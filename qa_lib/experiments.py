"""The named experiment variants (notebook 05), defined once for it and benchmarks/quality.py.

A variant is a change to the encoder options and to the training settings of a baseline run: the
original lesson's random-init towers, the untrained towers, qa_lib's defaults, and the levers
compared against them. Notebook 05 and the quality benchmark train the same variants from here,
each on its own budget (epochs, learning rate, data).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from qa_lib.config import EncoderConfig, TrainConfig
from qa_lib.encoders import DualEncoder
from qa_lib.train import fit

LESSON_LAYERS = 3  # the original lesson's towers: a 3-layer transformer of MiniLM's shape


def lesson_encoder(base: EncoderConfig) -> EncoderConfig:
    """The original lesson's towers: random init, CLS pooling, raw dot products.

    The architecture is ``base``'s with 3 layers (or ``base``'s own size overrides, as in smoke
    runs with tiny models). No question flag: without cosines there is no fixed score range.
    """
    overrides = base.model_overrides or (("num_hidden_layers", LESSON_LAYERS),)
    return replace(
        base, pretrained=False, pooling="cls", normalize=False, model_overrides=overrides
    )


def _same(base: EncoderConfig) -> EncoderConfig:
    return base


@dataclass(frozen=True)
class Variant:
    """One system of a study: how its towers are built and trained."""

    about: str  # one line for tables and notebooks
    encoder: Callable[[EncoderConfig], EncoderConfig] = _same  # from the baseline's options
    train: dict | None = field(default_factory=dict)  # TrainConfig changes; None: not trained
    lesson: bool = False  # trained for the lesson's epochs instead of the budget's


VARIANTS: dict[str, Variant] = {
    "random_init": Variant(
        "the original lesson's towers: 3-layer random init, CLS pooling, raw dot product, "
        "no echo term, the lesson's epochs",
        encoder=lesson_encoder,
        train=dict(flag_loss_weight=0.0, scale=1.0),  # a temperature suits cosines, not raw dots
        lesson=True,
    ),
    "untrained": Variant("the pretrained towers, not trained", train=None),
    "qa_lib": Variant("qa_lib's defaults: two towers, the question flag learning from echoes"),
    "qa_lib_tied": Variant(
        "one shared tower (no question flag: a tied model has no answer side)",
        encoder=lambda c: replace(c, tied=True),
    ),
    "qa_lib_hardneg": Variant(
        "qa_lib with one BM25-mined hard negative per pair", train=dict(hard_negatives=1)
    ),
    "qa_lib_noecho": Variant(
        "qa_lib without the echo objective: the same towers, the flag untrained",
        train=dict(flag_loss_weight=0.0),
    ),
    "qa_lib_ungrouped": Variant(
        "qa_lib with random batches instead of topic-aware ones", train=dict(group_batches=False)
    ),
    "echo_negative": Variant(
        "no question flag; each question's echo is one extra negative (weight 1)",
        encoder=lambda c: replace(c, question_flag=False),
        train=dict(echo_negative_weight=1.0),
    ),
    "echo_negative_w0.1": Variant(
        "the same with weight 0.1",
        encoder=lambda c: replace(c, question_flag=False),
        train=dict(echo_negative_weight=0.1),
    ),
    "flag_v1": Variant(
        "the question flag of qa_lib 0.1: the detector reads the middle layer's mean only and "
        "learns from echoes and answers alone (no form views), searched with today's ramp",
        encoder=lambda c: replace(c, flag_features="mean"),
        train=dict(flag_views=False),
    ),
    "qa_lib_symmetric": Variant(
        "qa_lib with the symmetric loss (each answer also scored against all questions)",
        train=dict(symmetric=True),
    ),
    "qa_lib_lr2e-5": Variant("qa_lib at learning rate 2e-5", train=dict(lr=2e-5)),
    "qa_lib_lr1e-4": Variant("qa_lib at learning rate 1e-4", train=dict(lr=1e-4)),
    "qa_lib_alr0.3": Variant(
        "qa_lib with the answer tower at 0.3 times the learning rate",
        train=dict(answer_lr_scale=0.3),
    ),
    "qa_lib_alr0": Variant(
        "qa_lib with the answer tower frozen: the question tower learns the pretrained "
        "answer space",
        train=dict(answer_lr_scale=0.0),
    ),
    "qa_lib_attn0": Variant(
        "qa_lib without dropout on the attention weights (issue 19's speed lever: the CPU's "
        "fused attention kernel runs)",
        encoder=lambda c: replace(c, attention_dropout=0.0),
    ),
    "qa_lib_alen256": Variant(
        "qa_lib with answers cut at 256 tokens instead of 128 (issue 16: SQuAD's paragraphs)",
        encoder=lambda c: replace(c, max_a_len=256),
    ),
    "qa_lib_proj": Variant(
        "qa_lib with a 384 x 384 projection on each tower, starting as the identity (the control "
        "of qa_lib_sharedproj)",
        encoder=lambda c: replace(c, proj_dim=384),
    ),
    "qa_lib_sharedproj": Variant(
        "qa_lib with one 384 x 384 projection shared by the two towers, starting as the identity "
        "(Dong et al., EMNLP 2022: closes separate towers' gap to a shared encoder)",
        encoder=lambda c: replace(c, proj_dim=384, shared_proj=True),
    ),
    "qa_lib_sharedproj_lr20": Variant(
        "qa_lib_sharedproj with the projection at 20 times the towers' rate (1e-3 at the "
        "default lr): at the towers' rate an identity projection barely moves in one epoch",
        encoder=lambda c: replace(c, proj_dim=384, shared_proj=True),
        train=dict(proj_lr_scale=20.0),
    ),
    "qa_lib_warmup0": Variant(
        "qa_lib without warm-up (linear decay from the first step)", train=dict(warmup_ratio=0.0)
    ),
    "qa_lib_warmup0.3": Variant(
        "qa_lib with warm-up over 30% of the steps (default 10%)", train=dict(warmup_ratio=0.3)
    ),
    "untrained_alen256": Variant(
        "the pretrained towers, not trained, reading answers up to 256 tokens (the untrained "
        "baseline of qa_lib_alen256)",
        encoder=lambda c: replace(c, max_a_len=256),
        train=None,
    ),
    "flag_lr_0.02": Variant(
        "the question flag's detector at learning rate 0.02 (default 0.1)",
        train=dict(flag_lr=0.02),
    ),
}


def variant_config(name: str, budget: TrainConfig, lesson_epochs: int) -> TrainConfig | None:
    """The training settings of variant ``name`` on ``budget``; None for an untrained variant."""
    variant = VARIANTS[name]
    if variant.train is None:
        return None
    epochs = lesson_epochs if variant.lesson else budget.num_epochs
    return replace(budget, num_epochs=epochs, **variant.train)


def train_variant(
    name: str,
    train,
    budget: TrainConfig,
    seed: int = 0,
    base: EncoderConfig | None = None,
    lesson_epochs: int = 5,
    progress: bool = False,
) -> DualEncoder:
    """Build variant ``name``'s towers with ``seed`` and train them on ``train`` (unless untrained).

    Args:
        name: a key of :data:`VARIANTS`.
        train: the training pairs.
        budget: epochs, batch size, learning rate, ... shared by every variant of a study.
        seed: seeds the init, data order and dropout (``budget.seed`` is replaced by it).
        base: the baseline's encoder options (None: qa_lib's defaults).
        lesson_epochs: epochs of the lesson-style variants.
        progress: show the training bar.
    """
    model = DualEncoder.from_config(VARIANTS[name].encoder(base or EncoderConfig()), seed=seed)
    config = variant_config(name, replace(budget, seed=seed), lesson_epochs)
    if config is not None:
        fit(model, train, config=config, progress=progress)
    return model
