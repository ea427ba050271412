"""Command line (README, notebook 04): ``python -m qa_lib {quickstart,train,evaluate,demo}``.

Errors a user can cause print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from qa_lib.config import EncoderConfig, TrainConfig
from qa_lib.data import load_pairs
from qa_lib.distributed import barrier, init_distributed, launched, shutdown
from qa_lib.encoders import DualEncoder
from qa_lib.errors import QAError
from qa_lib.evaluate import demo_scores, evaluate
from qa_lib.files import write_json
from qa_lib.hybrid import tune_lexical_weight
from qa_lib.plotting import plot_epoch_metrics, plot_loss, plot_metric_bars, save_figure
from qa_lib.reporting import format_demo, format_table, run_record
from qa_lib.runtime import PRECISIONS
from qa_lib.saving import is_model_folder
from qa_lib.train import fit

# ----------------------------------------------------------------------------- helpers


def _check_out_dir(out: Path, overwrite: bool, resume: bool = False) -> None:
    if overwrite and resume:
        raise QAError("--overwrite starts afresh and --resume continues; pass only one of them")
    if out.exists() and not out.is_dir():
        raise QAError(f"--out {out}: is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not (overwrite or resume):
        raise QAError(
            f"--out {out}: folder is not empty; choose a new folder, pass --overwrite, or "
            f"--resume to continue the run saved there"
        )


def _encoder_config(args) -> EncoderConfig:
    return EncoderConfig(
        model=args.model,
        pooling=args.pooling,
        tied=args.tied,
        pretrained=not args.random_init,
        normalize=not args.dot,
        proj_dim=args.proj_dim,
        question_flag=not args.no_question_flag,
    )


def _train_config(args) -> TrainConfig:
    return TrainConfig(
        num_epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        max_steps=args.max_steps,
        checkpoint_every=getattr(args, "checkpoint_every", None),
        flag_loss_weight=args.flag_loss_weight,
        echo_negative_weight=args.echo_negative_weight,
        flag_lr=args.flag_lr,
        hard_negatives=args.hard_negatives,
        group_batches=not args.no_group_batches,
        scale=args.scale,
        device=args.device,
        precision=args.precision,
    )


def _load_model(spec: str | None, seed: int = 0) -> DualEncoder:
    """A saved dual encoder folder, or a model name/folder for untrained towers."""
    if spec and is_model_folder(spec):
        return DualEncoder.load(spec)
    return DualEncoder.from_config(EncoderConfig(model=spec), seed=seed)


def _save_plots(out: Path, history, baseline: dict | None) -> list[str]:
    save_figure(plot_loss(history.step_loss, history.chance_loss), out / "loss.png")
    names = ["loss.png"]
    if history.epochs and "recall@1" in history.epochs[0]:
        save_figure(plot_epoch_metrics(history.epochs, baseline=baseline), out / "validation.png")
        names.append("validation.png")
    return names


def _splits(args, names=("train", "validation", "test")) -> list:
    return [load_pairs(args.data, s, seed=args.seed) for s in names]


# ----------------------------------------------------------------------------- commands


def cmd_train(args) -> dict:
    """Train on ``--data`` and save best/last models, metrics.json and plots in ``--out``.

    Under torchrun or accelerate launch every process trains its share of each global batch;
    rank 0 alone writes and prints.
    """
    world = init_distributed(args.device)
    try:
        return _train(args, world)
    finally:
        shutdown()


def _train(args, world) -> dict:
    """cmd_train in the process group (one process: World())."""
    out = Path(args.out)
    _check_out_dir(out, args.overwrite, args.resume)
    barrier(world)  # every process has checked --out before rank 0 writes there
    train = load_pairs(args.data, args.split, seed=args.seed, drop_incomplete=args.drop_incomplete)
    val = None
    if args.val_split != "none":
        try:
            val = load_pairs(
                args.data, args.val_split, seed=args.seed, drop_incomplete=args.drop_incomplete
            )
        except QAError:
            val = None  # the source has no such split: train without validation
    model = DualEncoder.from_config(_encoder_config(args), seed=args.seed)
    config = _train_config(args)
    start = time.perf_counter()
    history = fit(
        model, train, val, config, out_dir=out, progress=not args.quiet, resume=args.resume
    )
    record = run_record(args.data, args.argv, model, config, train, history)
    record["train_seconds"] = time.perf_counter() - start  # this session only, when resumed
    record["world_size"] = world.size  # processes; batch_size is the global batch
    if not world.is_main:
        return record
    record["plots"] = _save_plots(out, history, None)
    write_json(out / "metrics.json", record)
    resumed = f" (resumed at step {history.resumed_from})" if history.resumed_from else ""
    print(
        f"trained {len(history.step_loss)} steps{resumed}; best epoch {history.best_epoch}; "
        f"models in {out / 'best'} and {out / 'last'}"
    )
    return record


def cmd_evaluate(args) -> dict:
    """Evaluate a saved model (or untrained towers) on ``--data``'s split."""
    pairs = load_pairs(args.data, args.split, seed=args.seed)
    model = _load_model(args.model, seed=args.seed)
    weight = args.lexical_weight
    if args.tune_on:
        held_out = load_pairs(args.data, args.tune_on, seed=args.seed)
        weight, mrr = tune_lexical_weight(model, held_out)
        grid = ", ".join(f"{w}: {v:.3f}" for w, v in mrr.items())
        print(f"BM25 weight {weight}, the best MRR@10 on the {args.tune_on} split ({grid})")
    metrics = evaluate(model, pairs, progress=not args.quiet, lexical_weight=weight)
    metrics["lexical_weight"] = weight
    name = args.model or "all-MiniLM-L6-v2 (untrained)"
    print(format_table({name + (f" + BM25 (weight {weight})" if weight else ""): metrics}))
    if args.json:
        write_json(args.json, metrics)
    return metrics


def cmd_demo(args) -> list:
    """Score the lesson's demo question against its three candidates."""
    scores = demo_scores(_load_model(args.model))
    print(format_demo(scores))
    return scores


def cmd_quickstart(args) -> dict:
    """The main job: train on the embedded data, compare untrained vs trained on its test split."""
    if launched():
        raise QAError(
            "quickstart runs in one process; under torchrun use `-m qa_lib train` "
            "(then `python -m qa_lib evaluate` on the saved model)"
        )
    start = time.perf_counter()
    out = Path(args.out)
    _check_out_dir(out, args.overwrite)
    train, val, test = _splits(args)
    cleaning = train.report.summary() if train.report else "not cleaned"
    print(f"data: {len(train)} train / {len(val)} validation / {len(test)} test pairs ({cleaning})")
    model = DualEncoder.from_config(_encoder_config(args), seed=args.seed)
    before, demo_before = evaluate(model, test, progress=not args.quiet), demo_scores(model)
    config = _train_config(args)
    history = fit(model, train, val, config, out_dir=out, progress=not args.quiet)
    model = DualEncoder.load(out / "best")
    after, demo_after = evaluate(model, test, progress=not args.quiet), demo_scores(model)
    results = {"untrained": before, "trained": after}
    _print_quickstart(results, demo_before, demo_after)
    plots = _save_plots(out, history, before)
    bars = plot_metric_bars(results, chance=after["chance_recall@1"])
    save_figure(bars, out / "test_metrics.png")
    record = {
        **run_record(args.data, args.argv, model, config, train, history),
        "test": results,
        "demo": {"untrained": demo_before, "trained": demo_after},
        "plots": plots + ["test_metrics.png"],
        "wall_seconds": time.perf_counter() - start,
    }
    write_json(out / "metrics.json", record)
    elapsed = time.perf_counter() - start
    print(f"\nwrote {out}/metrics.json, plots and models (best, last) in {elapsed:.0f} s")
    return record


def _print_quickstart(results: dict, demo_before, demo_after) -> None:
    after = results["trained"]
    print(
        f"\nHeld-out test split ({after['n_questions']} questions, {after['n_candidates']} "
        f"candidates, chance recall@1 = {after['chance_recall@1']:.3f}):"
    )
    print(format_table(results))
    print("\nThe lesson's demo, before training:\n" + format_demo(demo_before))
    print("after training:\n" + format_demo(demo_after))


# ----------------------------------------------------------------------------- parser


def _add_training_options(p: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    p.add_argument("--model", default=None, help="hub id or folder (default: packaged MiniLM)")
    p.add_argument("--epochs", type=int, default=defaults.num_epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--scale", type=float, default=defaults.scale, help="inverse temperature")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument(
        "--hard-negatives",
        type=int,
        default=defaults.hard_negatives,
        help="BM25-mined wrong answers per pair, as extra negatives (0 = none)",
    )
    p.add_argument(
        "--no-group-batches",
        action="store_true",
        help="random batches even when the data has topics (default: one topic per batch)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=defaults.precision,
        help="bf16 autocast or fp32; auto = bf16 where the hardware has it (default)",
    )
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty --out folder")


def _add_echo_options(p: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    p.add_argument(
        "--no-question-flag",
        "--no-answer-prior",
        dest="no_question_flag",
        action="store_true",
        help="no question flag on the answer side (the echo then wins unless "
        "--echo-negative-weight trains the towers apart)",
    )
    p.add_argument(
        "--flag-loss-weight",
        type=float,
        default=defaults.flag_loss_weight,
        help="weight of the question flag's detector loss (0 = the detector stays untrained)",
    )
    p.add_argument(
        "--echo-negative-weight",
        type=float,
        default=defaults.echo_negative_weight,
        help="each question's own text as an extra negative counted this many times (0 = off)",
    )
    p.add_argument(
        "--flag-lr",
        "--prior-lr",
        dest="flag_lr",
        type=float,
        default=defaults.flag_lr,
        help="learning rate of the question flag's detector",
    )


def _add_encoder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pooling", choices=("mean", "cls"), default="mean")
    p.add_argument("--proj-dim", type=int, default=None, help="add a projection to this size")
    p.add_argument("--tied", action="store_true", help="one shared encoder for both sides")
    p.add_argument("--random-init", action="store_true", help="random weights, same config")
    p.add_argument("--dot", action="store_true", help="raw dot product instead of cosine")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    _add_training_options(p)
    _add_echo_options(p)
    _add_encoder_options(p)


def _add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a dual encoder")
    p.add_argument("--data", required=True, help="file, folder, hub id, or 'default'")
    p.add_argument("--out", required=True, help="folder for models, metrics.json and plots")
    p.add_argument("--split", default="train", help="rows to train on (BEIR: the qrels file)")
    p.add_argument("--val-split", default="validation", help="'none' to skip validation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--drop-incomplete",
        action="store_true",
        help="skip rows with an empty question or answer instead of failing",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="N",
        help="also checkpoint every N steps (a checkpoint is always written after each epoch)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out from its last complete checkpoint "
        "(pass the same options as the first time)",
    )
    _add_model_options(p)
    p.set_defaults(func=cmd_train)


def _add_evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="held-out metrics for a model")
    p.add_argument("--model", default=None, help="saved model folder, or a model name/folder")
    p.add_argument("--data", default="default")
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the metrics to this file")
    p.add_argument(
        "--lexical-weight",
        type=float,
        default=0.0,
        help="rank with the hybrid score: dense + this weight x the share of the question's "
        "own BM25 score a candidate reaches (0 = dense only)",
    )
    p.add_argument(
        "--tune-on",
        default=None,
        metavar="SPLIT",
        help="choose --lexical-weight by MRR@10 on this split (e.g. validation), never the test",
    )
    p.set_defaults(func=cmd_evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qa_lib", description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("quickstart", help="train + before/after evaluation (make demo)")
    p.add_argument("--data", default="default")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--seed", type=int, default=0)
    _add_model_options(p)
    p.set_defaults(func=cmd_quickstart, epochs=5)
    _add_train_parser(sub)
    _add_evaluate_parser(sub)
    p = sub.add_parser("demo", help="the lesson's demo: question, answer, Donald Duck")
    p.add_argument("--model", default=None, help="saved model folder, or a model name/folder")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except QAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
