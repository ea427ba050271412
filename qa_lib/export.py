"""Export a trained dual encoder for sentence-transformers and for DPR (README "Export").

``export_model(folder, out, "sentence-transformers")`` writes the layout sentence-transformers'
own ``Router`` saves: a root ``modules.json`` naming a Router at path "" (and a Normalize module
for cosine models), ``router_config.json`` routing ``"query"`` to the question tower and
``"document"`` (the default route) to the answer tower, one sub-folder per module. Class paths
and configs are those of sentence-transformers v5 (``sentence_transformers.models.*``), which 6.x
still loads. ``"dpr"`` writes ``question_encoder/`` and ``context_encoder/`` for transformers'
``DPRQuestionEncoder`` / ``DPRContextEncoder`` where DPR can express the scoring (CLS pooling, raw
dot products). Both carry a model card (README.md) read from the training run's metrics.json.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qa_lib.config import DEFAULT_MODEL
from qa_lib.encoders import DualEncoder
from qa_lib.errors import QAError
from qa_lib.hub import quiet_transformers
from qa_lib.saving import replace_dir

FORMATS = ("sentence-transformers", "dpr")
# the class paths sentence-transformers v5 writes; 6.x maps them to its new modules
ST_CLASSES = {
    "router": "sentence_transformers.models.Router",
    "Transformer": "sentence_transformers.models.Transformer",
    "Pooling": "sentence_transformers.models.Pooling",
    "Dense": "sentence_transformers.models.Dense",
    "Normalize": "sentence_transformers.models.Normalize",
}
ROUTES = {"query": "question", "document": "answer"}  # sentence-transformers task -> tower
DPR_FOLDERS = {"question": "question_encoder", "answer": "context_encoder"}
FLAG_LOST = (
    "the question flag is not exported: sentence-transformers' stock modules cannot append a "
    "column computed from the answer tower's layer {layer} to an embedding normalised before it "
    "(that needs custom code, i.e. trust_remote_code); the exported model scores cos(q, a) "
    "without the flag's penalty, so question-shaped passages (a question's own text) are no "
    "longer pushed below the answers"
)


@dataclass
class Exported:
    """What :func:`export_model` wrote, and what the exported model cannot do that qa_lib does."""

    folder: Path
    format: str
    lost: list[str] = field(default_factory=list)  # one sentence per capability lost


def export_model(model_dir: str | os.PathLike, out: str | os.PathLike, fmt: str) -> Exported:
    """Write the saved dual encoder in ``model_dir`` as a ``fmt`` folder at ``out``, atomically.

    Args:
        model_dir: a folder written by :meth:`DualEncoder.save` (a run's ``best/``).
        out: the folder to write (replaced if it exists).
        fmt: "sentence-transformers" or "dpr".

    Returns:
        The folder, the format, and what was lost.

    Raises:
        QAError: an unknown format, or a model whose scoring DPR cannot express.
    """
    if fmt not in FORMATS:
        raise QAError(f"unknown export format {fmt!r}: use one of {FORMATS}")
    model = DualEncoder.load(model_dir)
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        writer = write_sentence_transformers if fmt == "sentence-transformers" else write_dpr
        lost = writer(model, tmp)
        card = model_card(model, run_record(model_dir), fmt, lost)
        (tmp / "README.md").write_text(card)
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Exported(target, fmt, lost)


# ------------------------------------------------------------------------ sentence-transformers


def write_sentence_transformers(model: DualEncoder, folder: Path) -> list[str]:
    """Write ``model`` in sentence-transformers' Router layout into ``folder``.

    Returns:
        What the exported model loses (the question flag, if the model has one).
    """
    types, structure = {}, {}
    for route, side in ROUTES.items():
        structure[route] = _write_route(model, side, route, folder)
        types.update({module: ST_CLASSES[module.split("_")[-1]] for module in structure[route]})
    router = {
        "types": types,
        "structure": structure,
        "parameters": {"default_route": "document", "allow_empty_key": True},
    }
    _write_json(folder / "router_config.json", router)
    modules = [{"idx": 0, "name": "0", "path": "", "type": ST_CLASSES["router"]}]
    if model.config.normalize:
        modules.append(
            {"idx": 1, "name": "1", "path": "1_Normalize", "type": ST_CLASSES["Normalize"]}
        )
        _write_json(folder / "1_Normalize" / "config.json", {})
    _write_json(folder / "modules.json", modules)
    _write_json(folder / "config_sentence_transformers.json", _st_settings(model))
    if model.has_question_flag:
        return [FLAG_LOST.format(layer=model.flag_layer)]
    return []


def _write_route(model: DualEncoder, side: str, route: str, folder: Path) -> list[str]:
    """One tower's modules (Transformer, Pooling, a Dense for a projection); their folder names."""
    question = side == "question"
    encoder = model.q_encoder if question else model.a_encoder
    max_len = model.config.max_q_len if question else model.config.max_a_len
    hidden = encoder.config.hidden_size
    names = [f"{route}_0_Transformer", f"{route}_1_Pooling"]
    _save_tower(encoder, model.tokenizer, max_len, folder / names[0])
    _write_json(folder / names[0] / "sentence_bert_config.json", {"max_seq_length": max_len})
    _write_json(folder / names[1] / "config.json", _pooling_config(hidden, model.config.pooling))
    proj = model.q_proj if question else model.a_proj
    if model.config.proj_dim:
        names.append(f"{route}_2_Dense")
        _write_dense(proj, folder / names[2])
    return names


def _save_tower(encoder, tokenizer, max_len: int, folder: Path) -> None:
    """A backbone and its tokenizer in one folder; the tokenizer truncates at ``max_len``."""
    with quiet_transformers():
        encoder.save_pretrained(folder)
    _save_tokenizer(tokenizer, max_len, folder)


def _pooling_config(hidden: int, pooling: str) -> dict:
    """Pooling's config in the v5 keys (6.x converts them): one mode, mean or CLS."""
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")
    config = {"word_embedding_dimension": hidden}
    chosen = "cls_token" if pooling == "cls" else "mean_tokens"
    config.update({f"pooling_mode_{m}": m == chosen for m in modes})
    config.update(pooling_mode_weightedmean_tokens=False, pooling_mode_lasttoken=False)
    config["include_prompt"] = True
    return config


def _write_dense(proj, folder: Path) -> None:
    """A projection head as a Dense module: same weights, bias, identity activation."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "in_features": proj.in_features,
        "out_features": proj.out_features,
        "bias": True,
        "activation_function": "torch.nn.modules.linear.Identity",
    }
    _write_json(folder / "config.json", config)
    weights = {"linear.weight": proj.weight, "linear.bias": proj.bias}
    tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    save_file(tensors, folder / "model.safetensors")


def _st_settings(model: DualEncoder) -> dict:
    """config_sentence_transformers.json: no prompts, cosine or dot similarity."""
    import torch
    import transformers

    import qa_lib

    return {
        "__version__": {
            "qa_lib": qa_lib.__version__,
            "transformers": transformers.__version__,
            "pytorch": torch.__version__,
        },
        "prompts": {"query": "", "document": ""},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine" if model.config.normalize else "dot",
    }


# ----------------------------------------------------------------------------- DPR


def dpr_obstacles(model: DualEncoder) -> list[str]:
    """What DPR cannot express about ``model`` (empty: it exports as is).

    DPR embeds a text as its BERT's CLS vector, optionally projected, and scores raw dot products.
    """
    config, problems = model.config, []
    if config.pooling != "cls":
        problems.append(f"{config.pooling} pooling (DPR takes the CLS vector: --pooling cls)")
    if config.normalize:
        problems.append("cosine scores (DPR scores raw dot products: train with --dot)")
    if model.has_question_flag:
        problems.append("the question flag (DPR has no extra answer column)")
    kinds = {model.q_encoder.config.model_type, model.a_encoder.config.model_type}
    if kinds != {"bert"}:
        problems.append(f"a {'/'.join(sorted(kinds))} backbone (DPR wraps a BertModel)")
    return problems


def write_dpr(model: DualEncoder, folder: Path) -> list[str]:
    """Write ``question_encoder/`` and ``context_encoder/`` DPR folders into ``folder``.

    Raises:
        QAError: the model's scoring is one DPR cannot express (:func:`dpr_obstacles`).
    """
    problems = dpr_obstacles(model)
    if problems:
        raise QAError(
            "DPR cannot express this model's scoring: " + "; ".join(problems) + "; export it "
            "with --format sentence-transformers instead"
        )
    for side, sub in DPR_FOLDERS.items():
        dpr = _dpr_encoder(model, side)
        with quiet_transformers():
            dpr.save_pretrained(folder / sub)
        max_len = model.config.max_q_len if side == "question" else model.config.max_a_len
        _save_tokenizer(model.tokenizer, max_len, folder / sub)
    return []


def _dpr_encoder(model: DualEncoder, side: str):
    """A DPRQuestionEncoder (question side) or DPRContextEncoder (answer side) with our weights."""
    from transformers import DPRConfig, DPRContextEncoder, DPRQuestionEncoder

    question = side == "question"
    encoder = model.q_encoder if question else model.a_encoder
    proj = model.q_proj if question else model.a_proj
    bert = {k: v for k, v in encoder.config.to_dict().items() if k in DPRConfig().to_dict()}
    bert.pop("model_type", None)
    config = DPRConfig(**bert, projection_dim=model.config.proj_dim or 0)
    dpr = (DPRQuestionEncoder if question else DPRContextEncoder)(config)
    inner = dpr.question_encoder if question else dpr.ctx_encoder
    weights = {k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")}
    inner.bert_model.load_state_dict(weights)
    if model.config.proj_dim:
        inner.encode_proj.load_state_dict(proj.state_dict())
    return dpr.eval()


def _save_tokenizer(tokenizer, max_len: int, folder: Path) -> None:
    """The tokenizer, truncating at the tower's length (``truncation=True`` uses it)."""
    old = tokenizer.model_max_length
    tokenizer.model_max_length = max_len
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.model_max_length = old


# ----------------------------------------------------------------------------- model card


def run_record(model_dir: str | os.PathLike) -> dict | None:
    """The training run's metrics.json when ``model_dir`` is a run's ``best/`` or ``last/``."""
    folder = Path(model_dir).resolve()
    record = folder.parent / "metrics.json"
    if folder.name not in ("best", "last") or not record.is_file():
        return None
    try:
        return json.loads(record.read_text())
    except (OSError, ValueError):
        return None


def held_out_metrics(record: dict | None) -> tuple[str, dict] | None:
    """``(what, metrics)``: the run's test metrics, else its best epoch's validation metrics."""
    if not record:
        return None
    test = record.get("test", {}).get("trained")
    if test:
        return "test split (metrics.json)", test
    history = record.get("history", {})
    best, epochs = history.get("best_epoch"), history.get("epochs", [])
    if best and len(epochs) >= best and "recall@1" in epochs[best - 1]:
        return f"validation split, best epoch {best}", epochs[best - 1]
    return None


def model_card(model: DualEncoder, record: dict | None, fmt: str, lost: list[str]) -> str:
    """The README.md of an exported folder: base model, data, settings, metrics, command, usage."""
    base = model.config.model or DEFAULT_MODEL
    library = "sentence-transformers" if fmt == "sentence-transformers" else "transformers"
    lines = [
        "---",
        f"library_name: {library}",
        "pipeline_tag: sentence-similarity" if fmt != "dpr" else "pipeline_tag: feature-extraction",
        "tags: [qa_lib, dual-encoder, question-answering, retrieval]",
        f"base_model: {base}",
        "---",
        "",
        "# A qa_lib question-answer dual encoder",
        "",
        f"Two BERT towers (questions, answers) trained with qa_lib, exported as {fmt}.",
        "",
        f"- **Base model:** {base}",
        f"- **Training data:** {_known(record, 'data')} "
        f"(fingerprint `{_known(record, 'data_fingerprint')}`, "
        f"{_known(record, 'n_train')} pairs)",
        f"- **Command that trained it:** `{_command(record)}`",
        "",
        *_card_settings(model, record),
        *_card_metrics(record),
        *_card_usage(fmt, model),
    ]
    if lost:
        lines += ["## What this export loses", "", *[f"- {item}" for item in lost], ""]
    return "\n".join(lines)


def _known(record: dict | None, key: str) -> str:
    return str(record[key]) if record and key in record else "unknown"


def _command(record: dict | None) -> str:
    if not record or "argv" not in record:
        return "unknown"
    return "python -m qa_lib " + " ".join(record["argv"])


def _card_settings(model: DualEncoder, record: dict | None) -> list[str]:
    encoder = {k: v for k, v in asdict(model.config).items() if k != "model_overrides"}
    train = (record or {}).get("train")
    lines = ["## Settings", "", "Encoder: " + ", ".join(f"`{k}={v}`" for k, v in encoder.items())]
    if train:
        lines.append("")
        lines.append("Training: " + ", ".join(f"`{k}={v}`" for k, v in train.items()))
    else:
        lines.append("\nTraining: unknown (the model folder is not inside a training run)")
    return lines + [""]


def _card_metrics(record: dict | None) -> list[str]:
    found = held_out_metrics(record)
    if found is None:
        return ["## Held-out metrics", "", "unknown (no metrics.json beside this model)", ""]
    where, metrics = found
    keys = [k for k in metrics if isinstance(metrics[k], (int, float)) and k != "loss"]
    return [
        "## Held-out metrics",
        "",
        f"Measured by qa_lib on the {where}, with qa_lib's own scoring:",
        "",
        "| " + " | ".join(keys) + " |",
        "|---" * len(keys) + "|",
        "| " + " | ".join(f"{metrics[k]:.3f}" for k in keys) + " |",
        "",
    ]


def _card_usage(fmt: str, model: DualEncoder) -> list[str]:
    if fmt == "dpr":
        code = [
            "from transformers import AutoTokenizer, DPRContextEncoder, DPRQuestionEncoder",
            'q_tok = AutoTokenizer.from_pretrained("OUT/question_encoder")',
            'q_enc = DPRQuestionEncoder.from_pretrained("OUT/question_encoder")',
            'q_emb = q_enc(**q_tok(questions, padding=True, truncation=True, return_tensors="pt"))'
            ".pooler_output",
            "# likewise OUT/context_encoder with DPRContextEncoder; score = q_emb @ a_emb.T",
        ]
    else:
        similarity = "cosine" if model.config.normalize else "dot product"
        code = [
            "from sentence_transformers import SentenceTransformer",
            'model = SentenceTransformer("OUT")',
            "q_emb = model.encode_query(questions)  # the question tower",
            "a_emb = model.encode_document(answers)  # the answer tower",
            f"scores = model.similarity(q_emb, a_emb)  # {similarity}",
        ]
    return ["## Usage", "", "```python", *code, "```", ""]


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
