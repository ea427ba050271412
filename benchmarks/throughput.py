"""Training and encoding throughput: qa_lib against the loops people would otherwise run.

Measured in one run, same model, batch, data and lengths, each system in its own subprocess:

  plain   a plain fp32 two-tower loop like the original lesson's (tokenise every step, pad to the
          maximum length, CLS pooling, torch AdamW)
  st      sentence-transformers' trainer with MultipleNegativesRankingLoss (one shared tower,
          mean pooling; bf16 on CUDA, its default fp32 on CPU), the tool practitioners pick
  st-bf16 the same with ``bf16=True`` on CPU too (CPU preset: what st gains from bf16 alone)
  qa_lib  qa_lib.train.fit with its defaults (two towers, the question flag's detector learning
          from the echoes and one form view per pair: both read once more by the answer tower, in
          one batch, forward only and only up to the layer the flag reads;
          pre-tokenised, length-sorted answer chunks; SDPA, fused AdamW; bf16 autocast where the
          hardware multiplies bf16 natively: CUDA, and CPUs with AVX512-BF16 or AMX)
  qa_lib-noecho  the same without the echo objective (the same work per pair as st)
  qa_lib-fp32    qa_lib with ``precision="fp32"`` (CPU preset: the gain without bf16)
  qa_lib-noecho-fp32  qa_lib-noecho in fp32 (with qa_lib-fp32: the echo's cost on CPUs without bf16)
  qa_lib-compile, qa_lib-noecho-compile  the same with torch.compile (GPU preset)
  qa_lib-densegrad  qa_lib with PyTorch's own word-embedding backward (a dense zero gradient per
          forward call) instead of qa_lib.row_grad's: that lever's share
  qa_lib-unpacked  qa_lib with the towers' padded forward (transformers' own) instead of
          qa_lib.packed's: that lever's share
  qa_lib-attn0   qa_lib with ``attention_dropout=0`` instead of MiniLM's 0.1: the CPU's fused
          attention kernel runs (a lever, not the default)
  qa_lib-exactdrop  qa_lib with ``model.fast_dropout = False``: the packed forward's dropout
          masks from ``bernoulli_``, as transformers' pass draws them, instead of 16 random bits
          per element (qa_lib.packed.keep_mask): that lever's share
  qa_lib-exactrows  qa_lib with the packed row count left as it is where oneDNN multiplies
          instead of rounded (qa_lib.packed.round_rows; oneDNN compiles a kernel per new shape):
          that lever's share (in fp32 only the question flag's detector pass rounds)
  qa_lib-chunks8  qa_lib with 8 length-sorted answer chunks per batch instead of the CPU's 4
          (less padding in the attention grids, twice the calls)

``--precision fp32`` measures as a CPU without native bf16 does (qa_lib's "auto" resolves to fp32
there; st-bf16, emulated, is skipped): every qa_lib row and the encoding run fp32. On a CPU
without native bf16 that is what happens anyway. ``--repeats N`` runs the systems N times,
interleaved, and reports each one's median (and its range): the machine's noise, measured.

Steady-state pairs/s are timed between step boundaries after warm-up steps (with a device
synchronise at each boundary; qa_lib's boundaries come from ``fit``'s ``on_step`` hook, st's from
a trainer callback). Encoding compares qa_lib's ``encode_answers`` with the raw forward pass of
the answer tower on pre-tokenised batches sorted by characters (``raw_forward``; ``encode_answers``
sorts by characters, then by token count within each block it tokenises) and by token count over
all texts (``raw_forward_tokens``: the least padding), with itself with its fp32 products through
MKL (``qa_lib_encode_mkl``: the oneDNN lever's share) and with sentence-transformers' ``encode``,
on 1,000 answers: after a warm-up pass each, three timed passes of each function in turn, the
median kept.

    python benchmarks/throughput.py                  # CPU: packaged MiniLM, nq-sample pairs
    python benchmarks/throughput.py --preset gpu     # CUDA: BERT-base-sized towers, fixed shape
    python benchmarks/throughput.py --preset gpu --grad-cache   # + batch 4096 with caching

Writes ``runs/bench/throughput-<preset>.json`` and ``.md``, and prints the table with ratios to st.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import peers  # benchmarks/peers.py: the sentence-transformers model, built once for both benchmarks

ROOT = Path(__file__).resolve().parents[1]
NQ = ROOT.parent / "shared" / "data" / "nq-sample-dlai" / "nq_sample.tsv"
BERT_BASE = dict(
    hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
)


@dataclass
class Spec:
    """One benchmark configuration, passed to each worker subprocess as JSON."""

    preset: str  # "cpu" (MiniLM, real pairs) or "gpu" (BERT-base-sized, fixed shape)
    device: str
    batch_size: int
    warmup: int  # untimed steps
    steps: int  # timed steps
    max_q_len: int = 32
    max_a_len: int = 128
    lr: float = 5e-5
    model_dir: str = ""  # filled by the parent
    grad_cache_chunk: int | None = None
    encode_count: int = 1000
    encode_rounds: int = 3  # timed passes per encoding function, taken in turn (median)
    precision: str = "auto"  # qa_lib's precision (the -fp32 rows: always fp32)


# ----------------------------------------------------------------------------- data and model


def load_texts(spec: Spec) -> tuple[list[str], list[str]]:
    """Real nq-sample pairs on CPU; on the GPU preset, texts that fill exactly 32/128 tokens."""
    n = max((spec.warmup + spec.steps + 2) * spec.batch_size, spec.encode_count)
    if spec.preset == "cpu":
        from qa_lib import load_pairs

        if not NQ.exists():
            sys.exit(f"benchmark data not found: {NQ} (the shared nq-sample-dlai dataset)")
        pairs = load_pairs(NQ)
        reps = -(-n // len(pairs))
        return (pairs.questions * reps)[:n], (pairs.answers * reps)[:n]
    from transformers import AutoTokenizer

    vocab = [
        w
        for w in AutoTokenizer.from_pretrained(spec.model_dir).get_vocab()
        if w.isalpha() and w.islower() and len(w) > 2
    ]
    rng = random.Random(0)
    questions = [" ".join(rng.choices(vocab, k=40)) for _ in range(n)]  # truncated to 32 tokens
    answers = [" ".join(rng.choices(vocab, k=160)) for _ in range(n)]  # truncated to 128 tokens
    return questions, answers


def prepare_model_dir(preset: str, folder: Path) -> str:
    """The packaged MiniLM (cpu), or a random BERT-base-sized BERT saved with its tokenizer."""
    from qa_lib.config import default_model_path

    source = os.environ.get("QA_BENCH_TOKENIZER") or default_model_path()
    if preset == "cpu":
        return source
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(source, **BERT_BASE)
    AutoModel.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return str(folder)


class Clock:
    """Timestamps at step boundaries.

    The device is synchronised only at the two boundaries of the timed window, so the host can
    queue the next step while the device works, as it does outside a benchmark.
    """

    def __init__(self, device: str, spec: Spec):
        self.device, self.marks = device, []
        self.window = (spec.warmup, spec.warmup + spec.steps)

    def mark(self) -> None:
        import torch

        if self.device.startswith("cuda") and len(self.marks) in self.window:
            torch.cuda.synchronize()
        self.marks.append(time.perf_counter())

    def pairs_per_s(self, spec: Spec) -> float:
        timed = self.marks[spec.warmup : spec.warmup + spec.steps + 1]
        return spec.steps * spec.batch_size / (timed[-1] - timed[0])


# ----------------------------------------------------------------------------- systems


def run_plain(spec: Spec, questions, answers, clock: Clock) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec.model_dir)
    q_model = AutoModel.from_pretrained(spec.model_dir).to(spec.device).train()
    a_model = AutoModel.from_pretrained(spec.model_dir).to(spec.device).train()
    params = list(q_model.parameters()) + list(a_model.parameters())
    optimizer = torch.optim.AdamW(params, lr=spec.lr)
    b = spec.batch_size

    def padded(texts, length):  # tokenised every step, padded to the maximum: the tutorial way
        return tok(
            texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt"
        ).to(spec.device)

    for step in range(spec.warmup + spec.steps + 1):
        clock.mark()
        q_in = padded(questions[step * b : (step + 1) * b], spec.max_q_len)
        a_in = padded(answers[step * b : (step + 1) * b], spec.max_a_len)
        q_emb = q_model(**q_in).last_hidden_state[:, 0]
        a_emb = a_model(**a_in).last_hidden_state[:, 0]
        scores = q_emb @ a_emb.T
        loss = torch.nn.functional.cross_entropy(scores, torch.arange(b, device=spec.device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        print(f"step {step} loss {loss.item():.4f}", file=sys.stderr)  # as tutorials do


def run_st(spec: Spec, questions, answers, clock: Clock, bf16: bool | None = None) -> None:
    from transformers import TrainerCallback

    model = peers.st_model(spec.model_dir, max_seq_length=spec.max_a_len, device=spec.device)

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.mark()

        def on_train_end(self, args, state, control, **kwargs):
            clock.mark()

    peers.train_mnrl(
        model,
        questions,
        answers,
        callbacks=[Timer()],
        per_device_train_batch_size=spec.batch_size,
        learning_rate=spec.lr,
        max_steps=spec.warmup + spec.steps,
        bf16=spec.device.startswith("cuda") if bf16 is None else bf16,
        logging_steps=10_000,
        seed=0,
        use_cpu=spec.device == "cpu",
    )


def run_qa_lib(
    spec: Spec,
    questions,
    answers,
    clock: Clock,
    echo: bool = True,
    compile: bool = False,
    precision: str | None = None,
    dense_grad: bool = False,
    packed: bool = True,
    fast_dropout: bool = True,
    round_rows: bool = True,
    answer_chunks: int | None = None,
    **encoder: object,
) -> None:
    from torch import nn

    from qa_lib import DualEncoder, EncoderConfig, Pairs, TrainConfig, fit
    from qa_lib import packed as packing

    if not round_rows:  # this worker process only
        packing.ONEDNN_ROWS = 1

    model = DualEncoder.from_config(
        EncoderConfig(
            model=spec.model_dir, max_q_len=spec.max_q_len, max_a_len=spec.max_a_len, **encoder
        )
    )
    model.packed, model.fast_dropout = packed, fast_dropout
    if dense_grad:  # undo qa_lib.row_grad: PyTorch's embedding backward
        for encoder in (model.q_encoder, model.a_encoder):
            encoder.get_input_embeddings().__class__ = nn.Embedding
    config = TrainConfig(
        batch_size=spec.batch_size,
        lr=spec.lr,
        num_epochs=1000,
        max_steps=spec.warmup + spec.steps + 1,
        flag_loss_weight=1.0 if echo else 0.0,
        device=spec.device,
        grad_cache_chunk=spec.grad_cache_chunk,
        compile=compile,
        precision=precision or spec.precision,
        answer_chunks=answer_chunks,
    )
    n = (spec.warmup + spec.steps + 2) * spec.batch_size
    pairs = Pairs(questions[:n], answers[:n])
    fit(model, pairs, config=config, progress=False, on_step=lambda _: clock.mark())


def run_encode(spec: Spec, questions, answers) -> dict:
    """passages/s: qa_lib encode_answers vs the raw forward pass vs sentence-transformers."""
    import torch

    from qa_lib import DualEncoder, EncoderConfig
    from qa_lib.batching import sorted_chunks
    from qa_lib.runtime import autocast

    texts = answers[: spec.encode_count]
    model = DualEncoder.from_config(EncoderConfig(model=spec.model_dir, max_a_len=spec.max_a_len))
    model.to(spec.device).eval()
    model.precision = spec.precision
    sync = torch.cuda.synchronize if spec.device.startswith("cuda") else (lambda: None)

    def batches(lengths: list[int]) -> list[dict]:
        chunks = sorted_chunks(lengths, 64, longest_first=True)
        return [model.tokenize([texts[i] for i in chunk], spec.max_a_len) for chunk in chunks]

    lengths = model.tokenizer(texts, truncation=True, max_length=spec.max_a_len)["input_ids"]
    by_tokens = batches([len(x) for x in lengths])
    by_chars = batches([len(t) for t in texts])  # as encode_answers first sorts

    def with_mkl() -> None:  # encode_answers with its fp32 products through MKL
        before, model.onednn = model.onednn, False
        try:
            model.encode_answers(texts, batch_size=64)
        finally:
            model.onednn = before

    def raw(token_batches: list[dict]) -> None:
        with torch.inference_mode(), autocast(model.device, model.precision):
            for batch in token_batches:
                model.embed_answers(batch)
        sync()

    systems = {
        "raw_forward": lambda: raw(by_chars),
        "raw_forward_tokens": lambda: raw(by_tokens),
        "qa_lib_encode": lambda: model.encode_answers(texts, batch_size=64),
        "qa_lib_encode_mkl": with_mkl,
    }
    try:
        st = peers.st_model(spec.model_dir, max_seq_length=spec.max_a_len, device=spec.device)
        if spec.device.startswith("cuda"):
            st = st.to(torch.bfloat16)
        systems["st_encode"] = lambda: st.encode(texts, batch_size=64)
    except ImportError:
        pass
    result = encode_rates(systems, len(texts), spec.encode_rounds)
    result["padded_tokens"] = {
        "tokens": sum(int(b["attention_mask"].sum()) for b in by_tokens),
        "by_tokens": sum(b["attention_mask"].numel() for b in by_tokens),
        "by_chars": sum(b["attention_mask"].numel() for b in by_chars),
    }
    return result


def encode_rates(systems: dict, n: int, rounds: int) -> dict[str, float]:
    """passages/s of each encoding function: a warm-up pass each, then ``rounds`` timed passes
    taken in turn (a slow spell of the machine hits every function alike), the median kept."""
    import statistics

    for fn in systems.values():
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(rounds):
        for name, fn in systems.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    return {name: n / statistics.median(times) for name, times in seconds.items()}


def worker(system: str, spec: Spec) -> dict:
    import torch

    torch.manual_seed(0)
    questions, answers = load_texts(spec)
    if spec.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if system == "encode":
        result = run_encode(spec, questions, answers)
    else:
        clock = Clock(spec.device, spec)
        runner = {
            "plain": run_plain,
            "st": run_st,
            "st-bf16": lambda *a: run_st(*a, bf16=True),
            "qa_lib": run_qa_lib,
            "qa_lib-noecho": lambda *a: run_qa_lib(*a, echo=False),
            "qa_lib-fp32": lambda *a: run_qa_lib(*a, precision="fp32"),
            "qa_lib-noecho-fp32": lambda *a: run_qa_lib(*a, echo=False, precision="fp32"),
            "qa_lib-compile": lambda *a: run_qa_lib(*a, compile=True),
            "qa_lib-noecho-compile": lambda *a: run_qa_lib(*a, echo=False, compile=True),
            "qa_lib-densegrad": lambda *a: run_qa_lib(*a, dense_grad=True),
            "qa_lib-unpacked": lambda *a: run_qa_lib(*a, packed=False),
            "qa_lib-attn0": lambda *a: run_qa_lib(*a, attention_dropout=0.0),
            "qa_lib-exactdrop": lambda *a: run_qa_lib(*a, fast_dropout=False),
            "qa_lib-exactrows": lambda *a: run_qa_lib(*a, round_rows=False),
            "qa_lib-chunks8": lambda *a: run_qa_lib(*a, answer_chunks=8),
        }[system]
        runner(spec, questions, answers, clock)
        result = {"pairs_per_s": clock.pairs_per_s(spec)}
    result["wall_s"] = time.perf_counter() - start
    if spec.device.startswith("cuda"):
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


# ----------------------------------------------------------------------------- parent


def flops_per_pair(spec: Spec, echo: bool) -> float:
    """Model FLOPs to train on one pair: 6·N·T for the weights + attention, both towers."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(spec.model_dir)
    d, layers = cfg.hidden_size, cfg.num_hidden_layers
    n_weights = layers * (4 * d * d + 2 * d * cfg.intermediate_size)

    def per_sequence(t: int) -> float:
        return 6 * n_weights * t + 12 * layers * d * t * t

    total = per_sequence(spec.max_q_len) + per_sequence(spec.max_a_len)
    # the detector's texts (echo + one view per pair): forward only (1/3), half the layers (1/2)
    return total + (2 * per_sequence(spec.max_q_len) / 6 if echo else 0.0)


def matmul_tflops() -> float:
    """The bf16 matrix-product ceiling measured on this GPU (8192³, median of 10)."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    times = []
    for i in range(13):
        torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 2 * 8192**3 / sorted(times)[len(times) // 2] / 1e12


def run_worker(system: str, spec: Spec) -> dict:
    cmd = [sys.executable, __file__, "--worker", system, "--spec", json.dumps(asdict(spec))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-5:]
        return {"error": " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    """The CPU's model name (Linux), its core count and whether it multiplies bf16 natively."""
    import torch

    from qa_lib.runtime import native_bf16

    name = os.uname().machine
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        name = models[0] if models else name
    bf16 = "native bf16" if native_bf16(torch.device("cpu")) else "no native bf16"
    return f"{name}, {os.cpu_count()} cores, {bf16}"


def median_result(runs: list[dict]) -> dict:
    """One system's repeats: the median of each rate (mean of the middle two for an even count),
    with every run's values; the other fields (memory) from the first run."""
    import statistics

    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    merged = dict(ok[0])
    keys = [  # the rates: every float but the wall time and peak memory
        k for k, v in ok[0].items() if isinstance(v, float) and k != "wall_s" and "peak" not in k
    ]
    for key in keys:
        values = [r[key] for r in ok]
        merged[key] = statistics.median(values)
        merged["runs" if key == "pairs_per_s" else f"{key}_runs"] = values
    return merged


TRAIN_COLUMNS = ("pairs/s", "range", "× st", "peak memory (MiB)", "MFU")


def training_row(r: dict, base: float | None) -> dict:
    """One training loop's cells; ``base`` is st's pairs/s (None when st did not run)."""
    if "pairs_per_s" not in r:
        return {"pairs/s": f"failed: {r['error'][:80]}"} | dict.fromkeys(TRAIN_COLUMNS[1:], "")
    mem = r.get("peak_gpu_mib", r["peak_rss_mib"])
    runs = r.get("runs", [r["pairs_per_s"]])
    return {
        "pairs/s": f"{r['pairs_per_s']:.1f}",
        "range": f"{min(runs):.1f}-{max(runs):.1f}" if len(runs) > 1 else "-",
        "× st": f"{r['pairs_per_s'] / base:.2f}" if base else "-",
        "peak memory (MiB)": f"{mem:.0f}",
        "MFU": f"{r['mfu']:.0%}" if "mfu" in r else "-",
    }


ENCODERS = ("raw_forward", "raw_forward_tokens", "qa_lib_encode", "qa_lib_encode_mkl", "st_encode")


def encoding_table(enc: dict) -> str:
    """passages/s of each encoder, with its ratio to the raw forward and to st's ``encode``."""
    from qa_lib.reporting import markdown_table

    st = enc.get("st_encode")
    rows = {
        key: {
            "passages/s": f"{enc[key]:.1f}",
            "range": "-".join(f"{f(enc[f'{key}_runs']):.1f}" for f in (min, max))
            if len(enc.get(f"{key}_runs", [])) > 1
            else "-",
            "× raw forward": f"{enc[key] / enc['raw_forward']:.2f}",
            "× st encode": f"{enc[key] / st:.2f}" if st else "-",
        }
        for key in ENCODERS
        if key in enc
    }
    columns = ("passages/s", "range", "× raw forward", "× st encode")
    text = markdown_table(rows, columns, "encoding (answers)")
    pad = enc.get("padded_tokens")
    if pad:
        text += (
            f"\n\n{pad['tokens']:,} tokens in {pad['by_tokens']:,} padded slots sorted by tokens, "
            f"{pad['by_chars']:,} sorted by characters (batch 64)."
        )
    return text


def table(results: dict, spec: Spec) -> str:
    """The training table (ratios to st) and, when encode ran, the encoding table."""
    from qa_lib.reporting import markdown_table

    base = results.get("st", {}).get("pairs_per_s")
    rows = {
        name: training_row(r, base)
        for name, r in results.items()
        if name != "encode" and ("pairs_per_s" in r or "error" in r)
    }
    first = f"training loop ({spec.preset}, batch {spec.batch_size}, {spec.device})"
    text = markdown_table(rows, TRAIN_COLUMNS, first) if rows else ""
    if "raw_forward" in results.get("encode", {}):
        text += ("\n\n" if text else "") + encoding_table(results["encode"])
    return text


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--systems", default=None, help="comma-separated (default: per preset)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32"),
        default="auto",
        help="fp32: measure qa_lib as on a CPU without native bf16 (st-bf16 skipped)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="run the systems this many times, interleaved"
    )
    parser.add_argument(
        "--grad-cache",
        action="store_true",
        help="also train batch 4096 (GPU) / 512 (CPU) with gradient caching",
    )
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    return parser.parse_args()


def make_spec(args: argparse.Namespace, gpu: bool) -> Spec:
    """The preset's configuration, with the command line's changes."""
    return Spec(
        preset=args.preset,
        device="cuda" if gpu else "cpu",
        batch_size=args.batch_size or (128 if gpu else 32),
        warmup=args.warmup or (5 if gpu else 2),
        steps=args.steps or (20 if gpu else 8),
        encode_count=20_000 if gpu else 1000,
        precision=args.precision,
    )


def system_names(args: argparse.Namespace, gpu: bool) -> tuple[list[str], list[str]]:
    """The systems to run (``--systems``, else the preset's; ``gradcache`` with ``--grad-cache``)
    and notes on those skipped: emulated bf16 for st on a CPU without native bf16."""
    import torch

    from qa_lib.runtime import native_bf16

    cpu_systems = "plain,st,st-bf16,qa_lib,qa_lib-noecho,qa_lib-fp32,encode"
    systems = (
        args.systems or ("plain,st,qa_lib,qa_lib-noecho,encode" if gpu else cpu_systems)
    ).split(",")
    if args.grad_cache and "gradcache" not in systems:
        systems.append("gradcache")
    notes = []
    emulated = args.precision == "fp32" or not native_bf16(torch.device("cpu"))
    if not gpu and emulated and "st-bf16" in systems:
        systems.remove("st-bf16")
        notes.append("st-bf16 skipped: without native bf16 the CPU emulates it (over 6 min a run)")
    return systems, notes


def run_systems(systems: list[str], spec: Spec, gpu: bool, repeats: int = 1) -> dict:
    """Each system's result, each in its own worker, ``repeats`` rounds (median kept);
    ``gradcache`` is qa_lib on a large batch."""
    runs: dict[str, list[dict]] = {}
    for round_ in range(repeats):
        for system in systems:
            print(f"running {system} (round {round_ + 1}) ...", file=sys.stderr, flush=True)
            name, worker_spec, worker_system = system, spec, system
            if system == "gradcache":
                worker_spec = Spec(
                    **{
                        **asdict(spec),
                        "batch_size": 4096 if gpu else 512,
                        "warmup": 1,
                        "steps": 2,
                        "grad_cache_chunk": 128 if gpu else 32,
                    }
                )
                big, chunk = worker_spec.batch_size, worker_spec.grad_cache_chunk
                name = f"qa_lib batch {big} + grad cache {chunk}"
                worker_system = "qa_lib"
            result = run_worker(worker_system, worker_spec)
            runs.setdefault(name, []).append(result)
            print(f"  {result}", file=sys.stderr, flush=True)
    return {name: median_result(r) for name, r in runs.items()}


def add_mfu(results: dict, spec: Spec, gpu: bool) -> tuple[float | None, float]:
    """Each training loop's MFU on the GPU; returns (matmul ceiling TFLOP/s, FLOPs per pair)."""
    ceiling = matmul_tflops() if gpu else None
    useful = flops_per_pair(spec, echo=False)  # q + a per pair, as in the issue
    for r in results.values():
        if ceiling and "pairs_per_s" in r:
            r["mfu"] = r["pairs_per_s"] * useful / (ceiling * 1e12)
    return ceiling, useful


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        print(json.dumps(worker(args.worker, Spec(**json.loads(args.spec)))))
        return
    import torch

    gpu = args.preset == "gpu"
    if gpu and not torch.cuda.is_available():
        sys.exit("--preset gpu needs a CUDA device")
    spec = make_spec(args, gpu)
    systems, notes = system_names(args, gpu)
    with tempfile.TemporaryDirectory() as tmp:
        spec.model_dir = prepare_model_dir(args.preset, Path(tmp))
        results = run_systems(systems, spec, gpu, args.repeats)
        ceiling, useful = add_mfu(results, spec, gpu)
    device_name = torch.cuda.get_device_name() if gpu else cpu_name()
    measured = f"measured on {device_name}; torch {torch.__version__}"
    if not gpu:
        measured += f"; qa_lib precision {args.precision}"
    if args.repeats > 1:
        measured += f"; median of {args.repeats} interleaved runs"
    record = {
        "spec": asdict(spec),
        "results": results,
        "bf16_matmul_tflops": ceiling,
        "torch": torch.__version__,
        "device_name": device_name,
        "notes": notes,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = "\n\n".join([table(results, spec), measured + "."] + notes)
    (out / f"throughput-{args.preset}.json").write_text(json.dumps(record, indent=2))
    (out / f"throughput-{args.preset}.md").write_text(text + "\n")
    print(text)
    if ceiling:
        print(
            f"\nbf16 matmul ceiling measured: {ceiling:.0f} TFLOP/s; MFU counts q + a FLOPs "
            f"per pair ({useful / 1e9:.0f} GFLOP)"
        )


if __name__ == "__main__":
    main()
