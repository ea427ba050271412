"""Command line (README, notebooks 04 and 06): ``python -m qa_lib {quickstart,train,evaluate,demo,
export,index,search}``.

Errors a user can cause print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

from qa_lib.batching import auto_answer_length
from qa_lib.config import EncoderConfig, TrainConfig
from qa_lib.data import load_pairs
from qa_lib.distributed import barrier, init_distributed, launched, shutdown
from qa_lib.encoders import DualEncoder
from qa_lib.errors import QAError
from qa_lib.evaluate import bm25_metrics, demo_scores, evaluate, rank_candidates
from qa_lib.export import FORMATS, export_model
from qa_lib.files import write_json
from qa_lib.hybrid import tune_lexical_weight
from qa_lib.index import DTYPES, KINDS, index_pairs, open_index, open_model
from qa_lib.plotting import plot_epoch_metrics, plot_loss, plot_metric_bars, save_figure
from qa_lib.reporting import format_demo, format_table, run_record
from qa_lib.runtime import PRECISIONS
from qa_lib.saving import model_folder
from qa_lib.train import fit
from qa_lib.trec import RUN_DEPTH, write_qrels, write_run

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
        attention_dropout=args.attention_dropout,
        max_q_len=args.max_q_len,
        max_a_len=EncoderConfig.max_a_len if args.max_a_len == AUTO else args.max_a_len,
    )


def _new_model(args, train, announce: bool = True) -> DualEncoder:
    """Towers to train on ``train``; ``--max-a-len auto`` measured on its answers (and printed
    when ``announce``)."""
    model = DualEncoder.from_config(_encoder_config(args), seed=args.seed)
    if args.max_a_len != AUTO:
        return model
    cut = auto_answer_length(model.tokenizer, list(dict.fromkeys(train.answers)), seed=args.seed)
    model.config = replace(model.config, max_a_len=cut)
    if announce:
        print(f"answers cut at {cut} tokens (--max-a-len auto, from the training answers)")
    return model


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
        symmetric=args.symmetric,
        answer_lr_scale=args.answer_lr_scale,
        device=args.device,
        precision=args.precision,
    )


def _load_model(spec: str | None, seed: int = 0) -> DualEncoder:
    """A saved dual encoder (its folder or its run's), or a model name for untrained towers."""
    folder = model_folder(spec) if spec else None
    if folder is not None:
        return DualEncoder.load(folder)
    return DualEncoder.from_config(EncoderConfig(model=spec), seed=seed)


def _save_plots(out: Path, history, baseline: dict | None) -> list[str]:
    per_epoch = history.epochs[0]["steps"] if history.epochs else None
    loss = plot_loss(history.step_loss, history.chance_loss, steps_per_epoch=per_epoch)
    save_figure(loss, out / "loss.png")
    names = ["loss.png"]
    if history.epochs and "recall@1" in history.epochs[0]:
        keys = ("recall@1", "mrr@10", "question_echo_rate")
        best = history.best_epoch
        epochs = plot_epoch_metrics(history.epochs, keys, baseline=baseline, best_epoch=best)
        save_figure(epochs, out / "validation.png")
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
    model = _new_model(args, train, announce=world.is_main)
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
    rows = {name + (f" + BM25 (weight {weight})" if weight else ""): metrics}
    if args.bm25:
        rows["BM25 (bm25s)"] = bm25_metrics(pairs)
    print(format_table(rows))
    if args.json:
        write_json(args.json, metrics | ({"bm25": rows["BM25 (bm25s)"]} if args.bm25 else {}))
    if args.run_file or args.qrels_file:
        _write_trec(args, model, pairs, weight)
    return metrics


def _write_trec(args, model, pairs, weight: float) -> None:
    """The ranking (top 100 per question) and the relevance judgements as TREC files."""
    task, ranking = rank_candidates(model, pairs, RUN_DEPTH, lexical_weight=weight)
    if args.run_file:
        write_run(args.run_file, ranking, args.run_tag)
        print(f"wrote the TREC run ({len(ranking)} questions, top {RUN_DEPTH}) to {args.run_file}")
    if args.qrels_file:
        write_qrels(args.qrels_file, task.relevant)
        print(f"wrote the TREC qrels to {args.qrels_file}")


def cmd_export(args) -> dict:
    """Write a saved model (or a run's best/) as a sentence-transformers or DPR folder."""
    folder = model_folder(args.model)
    if folder is None:
        raise QAError(f"--model {args.model}: no saved dual encoder or training run here")
    out = Path(args.out)
    _check_out_dir(out, args.overwrite)
    exported = export_model(folder, out, args.format)
    print(f"exported {folder} as {args.format} to {out} (model card: {out / 'README.md'})")
    for item in exported.lost:
        print(f"lost: {item}")
    return {"folder": str(out), "format": args.format, "lost": exported.lost}


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
    model = _new_model(args, train)
    before, demo_before = evaluate(model, test, progress=not args.quiet), demo_scores(model)
    val_before = evaluate(model, val)  # validation.png's epoch 0: the same split as the epochs
    config = _train_config(args)
    history = fit(model, train, val, config, out_dir=out, progress=not args.quiet)
    model = DualEncoder.load(out / "best")
    after, demo_after = evaluate(model, test, progress=not args.quiet), demo_scores(model)
    results = {"untrained": before, "trained": after}
    _print_quickstart(results, demo_before, demo_after)
    plots = _save_plots(out, history, val_before)
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
    p.add_argument(
        "--symmetric",
        action=argparse.BooleanOptionalAction,
        default=defaults.symmetric,
        help="also score each answer against all questions (the loss of both directions)",
    )
    p.add_argument(
        "--answer-lr-scale",
        type=float,
        default=defaults.answer_lr_scale,
        help="the answer tower's learning rate as a multiple of --lr (0 = frozen)",
    )
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


AUTO = "auto"


def _answer_length(text: str) -> int | str:
    """``--max-a-len``: a token count from 1 to 512, or "auto"."""
    if text == AUTO:
        return AUTO
    if not text.isdigit() or not 1 <= int(text) <= 512:
        raise argparse.ArgumentTypeError(f"{text!r}: use a token count from 1 to 512, or auto")
    return int(text)


def _add_encoder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pooling", choices=("mean", "cls"), default="mean")
    p.add_argument("--proj-dim", type=int, default=None, help="add a projection to this size")
    p.add_argument("--tied", action="store_true", help="one shared encoder for both sides")
    p.add_argument("--random-init", action="store_true", help="random weights, same config")
    p.add_argument("--dot", action="store_true", help="raw dot product instead of cosine")
    defaults = EncoderConfig()
    p.add_argument(
        "--attention-dropout",
        type=float,
        default=defaults.attention_dropout,
        help="dropout on the attention weights in training (default: the model's own, MiniLM "
        "0.1; 0 trains faster on a CPU)",
    )
    p.add_argument("--max-q-len", type=int, default=defaults.max_q_len, help="question tokens kept")
    p.add_argument(
        "--max-a-len",
        type=_answer_length,
        default=AUTO,
        help="answer tokens kept; auto (default): 128, or 256 when over a quarter of the "
        "training answers are longer than 128 tokens (SQuAD's paragraphs, MedQuAD's answers)",
    )


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
    p.add_argument(
        "--model", default=None, help="saved model folder, a training run's --out, or a model name"
    )
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
    p.add_argument(
        "--bm25",
        action="store_true",
        help="also print BM25's metrics on the same pool (the baseline to read the model against)",
    )
    p.add_argument("--run-file", default=None, help="write the ranking as a TREC run file")
    p.add_argument("--qrels-file", default=None, help="write the relevant answers as TREC qrels")
    p.add_argument("--run-tag", default="qa_lib", help="the run file's last column")
    p.set_defaults(func=cmd_evaluate)


def _add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a model for sentence-transformers or DPR")
    p.add_argument("--model", required=True, help="saved model folder, or a training run's --out")
    p.add_argument("--format", choices=FORMATS, default="sentence-transformers")
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty --out folder")
    p.set_defaults(func=cmd_export)


# ----------------------------------------------------------------------------- index and search


def cmd_index(args) -> dict:
    """Encode ``--data``'s candidate pool into a FAISS index folder ``--out``."""
    pairs = load_pairs(args.data, None if args.split == "all" else args.split, seed=args.seed)
    model = open_model(args.model, seed=args.seed)
    manifest = index_pairs(
        model,
        pairs,
        args.out,
        kind=args.kind,
        dtype=args.dtype,
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        model_spec=args.model,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    recall = manifest.get("recall@10_vs_flat")
    quality = "exact" if args.kind == "flat" else "no questions to measure recall on"
    if recall is not None:
        quality = f"recall@10 against flat {recall:.3f} on {manifest['recall_queries']} questions"
    print(
        f"indexed {manifest['count']} passages ({args.kind}, {manifest['dim']}-d {args.dtype}; "
        f"{quality}) in {manifest['build_seconds']:.1f} s: {args.out}"
    )
    return manifest


def _read_queries(args) -> list[str]:
    if args.query is not None:
        return [args.query]
    path = Path(args.queries)
    if not path.is_file():
        raise QAError(f"--queries {path}: no such file; give a text file with one query per line")
    queries = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    queries = [q for q in queries if q]
    if not queries:
        raise QAError(f"--queries {path}: the file holds no queries; write one query per line")
    return queries


def cmd_search(args) -> list[dict]:
    """Rank an index's passages for ``--query`` or each line of ``--queries``."""
    if args.k <= 0:
        raise QAError(f"-k {args.k}: give 1 or more results per query")
    queries = _read_queries(args)
    model = open_model(args.model) if args.model else None
    index = open_index(args.index, model, nprobe=args.nprobe, ef_search=args.ef_search)
    found = index.search(queries, args.k)
    for item in found:
        if args.json:
            print(json.dumps(item))
            continue
        print(f"query: {item['query']}")
        for hit in item["results"]:
            text = hit["text"] if len(hit["text"]) <= 90 else hit["text"][:87] + "..."
            print(f"  {hit['rank']:3d}  {hit['score']:7.3f}  [{hit['id']}]  {text}")
    return found


def _add_index_parser(sub) -> None:
    p = sub.add_parser("index", help="encode a passage pool into a FAISS index")
    p.add_argument("--model", default=None, help="saved model folder, or a model name/folder")
    p.add_argument("--data", required=True, help="file, folder, hub id, or 'default'")
    p.add_argument("--split", default="all", help="rows whose answers are indexed (default: all)")
    p.add_argument("--out", required=True, help="the index folder")
    p.add_argument("--kind", choices=KINDS, default="flat", help="flat = exact; hnsw, ivf = ANN")
    p.add_argument(
        "--dtype", choices=DTYPES, default="float32", help="stored vectors (float16: flat inexact)"
    )
    p.add_argument("--chunk-size", type=int, default=4096, help="passages encoded at a time")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.set_defaults(func=cmd_index)


def _add_search_parser(sub) -> None:
    p = sub.add_parser("search", help="rank an index's passages for queries")
    p.add_argument("--index", required=True, help="a folder written by 'qa_lib index'")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--query", default=None, help="one query")
    which.add_argument("--queries", default=None, help="a text file, one query per line")
    p.add_argument("-k", type=int, default=10, help="results per query")
    p.add_argument("--json", action="store_true", help="one JSON object per query")
    p.add_argument("--model", default=None, help="the model that built the index (checked)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF: lists visited per query")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW: candidates kept")
    p.set_defaults(func=cmd_search)


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
    _add_export_parser(sub)
    p = sub.add_parser("demo", help="the lesson's demo: question, answer, Donald Duck")
    p.add_argument(
        "--model", default=None, help="saved model folder, a training run's --out, or a model name"
    )
    p.set_defaults(func=cmd_demo)
    _add_index_parser(sub)
    _add_search_parser(sub)
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
