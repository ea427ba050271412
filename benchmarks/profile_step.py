"""Where a training step's time goes: PyTorch's profiler over a few of ``fit``'s steps.

The measurement behind qa_lib's CPU levers (README, Performance): the operators that took the most
CPU time, and how much of the answer batches is padding. Switch a lever off to see what it removed:

    python benchmarks/profile_step.py                         # qa_lib's defaults, fp32
    python benchmarks/profile_step.py --dense-grad            # PyTorch's embedding backward
    python benchmarks/profile_step.py --unpacked              # transformers' padded forward
    python benchmarks/profile_step.py --attention-dropout 0   # the fused attention kernel
    python benchmarks/profile_step.py --exact-dropout         # bernoulli_'s masks, not keep_mask's

The packaged MiniLM towers, batch 32, questions <= 32 and answers <= 128 tokens, nq-sample pairs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from qa_lib import DualEncoder, EncoderConfig, TrainConfig, fit, load_pairs  # noqa: E402
from qa_lib.batching import epoch_batches, sorted_chunks, tokenize_pairs  # noqa: E402
from qa_lib.step import chunk_count  # noqa: E402

NQ = Path(__file__).resolve().parents[2] / "shared" / "data" / "nq-sample-dlai" / "nq_sample.tsv"


def padding_share(model, pairs, config: TrainConfig) -> float:
    """The share of the answer chunks' token slots that are padding, over one epoch's batches."""
    data = tokenize_pairs(model, pairs)
    real = slots = 0
    for idx in epoch_batches(len(pairs), config.batch_size, config.seed, 0):
        lengths = [len(data.a_tokens[i]) for i in idx]
        for chunk in sorted_chunks(lengths, -(-len(idx) // chunk_count(model, config))):
            real += sum(lengths[i] for i in chunk)
            slots += len(chunk) * max(lengths[i] for i in chunk)
    return 1 - real / slots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"))
    parser.add_argument("--steps", type=int, default=4, help="profiled steps (after 2 warm-up)")
    parser.add_argument("--dense-grad", action="store_true", help="PyTorch's embedding backward")
    parser.add_argument("--unpacked", action="store_true", help="transformers' padded forward")
    parser.add_argument("--attention-dropout", type=float, default=None)
    parser.add_argument("--exact-dropout", action="store_true", help="model.fast_dropout = False")
    parser.add_argument("--rows", type=int, default=15, help="operators to print")
    args = parser.parse_args()
    if not NQ.exists():
        sys.exit(f"benchmark data not found: {NQ}")
    pairs = load_pairs(NQ)
    model = DualEncoder.from_config(EncoderConfig(attention_dropout=args.attention_dropout))
    model.packed, model.fast_dropout = not args.unpacked, not args.exact_dropout
    if args.dense_grad:
        for encoder in (model.q_encoder, model.a_encoder):
            encoder.get_input_embeddings().__class__ = nn.Embedding
    config = TrainConfig(batch_size=32, max_steps=2 + args.steps, precision=args.precision)
    print(f"answer chunks: {padding_share(model, pairs, config):.0%} of their token slots padding")
    profiler = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
    steps = {"done": 0}

    def on_step(_: int) -> None:  # the profiler runs from the end of step 2 to the last step
        steps["done"] += 1
        if steps["done"] == 2:
            profiler.__enter__()

    fit(model, pairs, config=config, progress=False, on_step=on_step)
    profiler.__exit__(None, None, None)
    table = profiler.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=36
    )
    print(f"{args.steps} steps, {torch.get_num_threads()} threads:\n{table}")


if __name__ == "__main__":
    main()
