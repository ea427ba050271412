"""Training cases that tests/test_distributed.py runs in one process and under torchrun.

Run as a script by ``torchrun --standalone --nproc_per_node 2 tests/ddp_cases.py OUT BERT_DIR``:
every process runs every case and writes what it got to ``OUT/<case>-rank<r>.pt``. Imported by the
test, :func:`run_case` gives the single-process reference of a case. Dropout is off (every
process draws its own masks), and fp32 (bf16 rounding would hide a wrong gradient of 1e-4).

AdamW's steps do not change when every gradient is scaled, so a gradient off by the number of
processes would still train alike: :func:`first_gradients` compares the gradients themselves.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import torch
from conftest import TINY

from qa_lib import DualEncoder, EncoderConfig, QAError, TrainConfig, fit, load_pairs
from qa_lib.batching import epoch_batches, tokenize_pairs
from qa_lib.distributed import init_distributed
from qa_lib.negatives import mine_bm25_negatives
from qa_lib.step import train_step

NO_DROPOUT = (("hidden_dropout_prob", 0.0), ("attention_probs_dropout_prob", 0.0))
BASE = dict(num_epochs=1, batch_size=16, lr=1e-3, warmup_ratio=0.0, eval_batch_size=32)
BASE.update(precision="fp32", seed=0)

# name: (EncoderConfig changes, TrainConfig changes, training pairs, validate)
CASES = {
    # no question flag; 89 pairs: the last global batch of 9 splits 5 + 4
    "plain": ({"question_flag": False}, {}, 89, False),
    # the default: question flag with form views, topic-aware batches, validation each epoch
    "flag": ({}, {}, 96, True),
    # BM25 negatives: up to 2 per pair, so the processes gather unequal numbers of rows. At lr 1e-3
    # AdamW turns rounding noise in near-zero gradients into weight changes of 1.6e-5 even in one
    # process (other answer chunks); the noise it passes on scales with lr
    "hard-negatives": ({}, {"hard_negatives": 2, "lr": 3e-4}, 96, False),
    # gradient caching (chunks of 3 of each process's 8 rows), hard negatives, echo negative
    "grad-cache": (
        {},
        {"grad_cache_chunk": 3, "hard_negatives": 1, "echo_negative_weight": 1.0},
        96,
        False,
    ),
    # symmetric loss over two epochs
    "symmetric": ({}, {"symmetric": True, "num_epochs": 2}, 64, False),
}
RESUMED = "flag"  # the case the resume check interrupts after INTERRUPT_AT steps
INTERRUPT_AT = 3


def tiny_config(**changes) -> EncoderConfig:
    """The tests' tiny random BERT (tests/conftest.py), without dropout."""
    return EncoderConfig(
        model=os.environ.get("QA_TINY_SOURCE") or None,
        pretrained=False,
        model_overrides=TINY + NO_DROPOUT,
        max_q_len=24,
        max_a_len=48,
        **changes,
    )


def start_model(name: str) -> DualEncoder:
    """Case ``name``'s model, its question flag's detector started off zero.

    From zero the detector's bias has a gradient of exactly 0 at the first step (p = 0.5 for
    answers and echoes alike), so AdamW's first step (+-flag_lr, whatever the gradient's size)
    follows the sign of rounding noise, and any change of summation order (other chunks, or the
    batch split over processes) flips it. A seeded non-zero start makes the comparison fair.
    """
    model = DualEncoder.from_config(tiny_config(**CASES[name][0]), seed=0)
    if model.question_flag is not None:
        probe, generator = model.question_flag.probe, torch.Generator().manual_seed(1)
        with torch.no_grad():
            probe.weight.copy_(0.1 * torch.randn(probe.weight.shape, generator=generator))
            probe.bias.fill_(0.5)
    return model


def case_config(name: str, out_dir=None) -> TrainConfig:
    changes = {**BASE, **CASES[name][1], "checkpoint_every": 2 if out_dir else None}
    return TrainConfig(**changes)


def first_gradients(name: str) -> dict:
    """The parameter gradients of case ``name``'s first global batch (one train_step)."""
    model, config = start_model(name), case_config(name)
    train = load_pairs("default", "train").select(range(CASES[name][2]))
    data = tokenize_pairs(model, train)
    if config.hard_negatives:
        data.negatives = mine_bm25_negatives(train, config.hard_negatives)
    idx = epoch_batches(len(train), config.batch_size, config.seed, 0, train.groups)[0]
    train_step(model, data, idx, config)
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def run_case(name: str, out_dir=None, resume: bool = False, on_step=None):
    """Train case ``name`` from scratch (or resume it); returns ``(history, model)``."""
    train = load_pairs("default", "train").select(range(CASES[name][2]))
    val = load_pairs("default", "test").select(range(32)) if CASES[name][3] else None
    model, config = start_model(name), case_config(name, out_dir)
    history = fit(
        model, train, val, config, out_dir=out_dir, progress=False, resume=resume, on_step=on_step
    )
    return history, model


def cli_args(out: Path, bert_dir: Path) -> list[str]:
    """``qa_lib train`` on the embedded data with a dropout-free tiny BERT, 3 steps."""
    return [
        "--quiet",
        "train",
        "--data",
        "default",
        "--out",
        str(out),
        "--model",
        str(bert_dir),
        "--random-init",
        "--max-steps",
        "3",
        "--batch-size",
        "16",
        "--precision",
        "fp32",
        "--val-split",
        "none",
        "--no-question-flag",  # its detector starts at zero: see start_model
    ]


def _interrupt(step: int) -> None:
    if step == INTERRUPT_AT:
        raise KeyboardInterrupt


def _resumed(out: Path):
    """Case RESUMED killed after INTERRUPT_AT steps (checkpoint at step 2), then resumed."""
    with contextlib.suppress(KeyboardInterrupt):
        run_case(RESUMED, out_dir=out, on_step=_interrupt)
    return run_case(RESUMED, out_dir=out, resume=True)


def _save(out: Path, name: str, rank: int, history, model, gradients=None) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    record = {"loss": history.step_loss, "epochs": history.epochs, "state": state}
    torch.save({**record, "gradients": gradients}, out / f"{name}-rank{rank}.pt")


def main(out: Path, bert_dir: Path) -> None:
    rank = init_distributed("cpu").rank
    for name in CASES:
        _save(out, name, rank, *run_case(name), first_gradients(name))
    _save(out, "resumed", rank, *_resumed(out / "resume-run"))
    try:
        model = DualEncoder.from_config(tiny_config(), seed=0)
        train = load_pairs("default", "train").select(range(32))
        fit(model, train, config=TrainConfig(**{**BASE, "batch_size": 15}), progress=False)
        message = ""
    except QAError as exc:
        message = str(exc)
    from qa_lib.cli import main as cli_main

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = cli_main(cli_args(out / "cli-run", bert_dir))
    torch.save(
        {"error": message, "status": status, "stdout": stdout.getvalue()},
        out / f"misc-rank{rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
