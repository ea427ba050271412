from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from qa_lib import DualEncoder, QAError
from qa_lib.question_flag import flag_features
from qa_lib.saving import HEADS_FILE, LEGACY_HEADS_FILE, OPTIONS_FILE, recover_interrupted_saves

TEXTS = ["a short one", "a considerably longer text with many more tokens in it", "mid length text"]
FIXTURE = Path(__file__).parent / "fixtures" / "model_v0_1"


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"tied": True, "proj_dim": 8},
        {"proj_dim": 8},
        {"proj_dim": 8, "shared_proj": True},
        {"question_flag": False},
    ],
)
def test_save_load_round_trip(tmp_path, tiny_config, changes):
    model = DualEncoder.from_config(tiny_config, **changes)
    if model.has_question_flag:  # a trained detector, with some texts flagged and some not
        probe = model.question_flag.probe
        with torch.no_grad():
            probe.weight.normal_(0, 1.0)
            raw = probe.weight @ _middle_layer(model, TEXTS).T + probe.bias  # (1, 3) logits
            probe.bias.sub_(raw.median() - 1e-3)
        column = model.encode_answers(TEXTS)[:, -1]
        assert (column < 0).any() and (column == 0).any(), column
    model.save(tmp_path / "m")
    again = DualEncoder.load(tmp_path / "m")
    assert again.config == model.config
    assert_close(again.score(TEXTS, TEXTS), model.score(TEXTS, TEXTS))
    assert not list(tmp_path.glob(".m.*")), "no temporary folders left behind"


def test_save_replaces_atomically_and_load_rejects_partial(tmp_path, tiny_model):
    target = tiny_model.save(tmp_path / "m")
    tiny_model.save(target)  # overwriting a complete save works
    (target / OPTIONS_FILE).unlink()  # what a crash before the last write would leave
    with pytest.raises(QAError, match="no saved dual encoder"):
        DualEncoder.load(target)


def test_recover_interrupted_saves(tmp_path, tiny_model):
    """A kill mid-swap leaves best/ moved aside and a half-written temp folder: tidy both."""
    tiny_model.save(tmp_path / "best")
    (tmp_path / "best").rename(tmp_path / ".best.old-1234abcd")
    (tmp_path / ".best.tmp-5678ef90" / "question_encoder").mkdir(parents=True)
    tiny_model.save(tmp_path / "last")
    (tmp_path / "last").rename(tmp_path / ".last.old-00000000")
    tiny_model.save(tmp_path / "last")  # the new copy made it: the old one is garbage
    recover_interrupted_saves(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last"]
    assert DualEncoder.load(tmp_path / "best").config == tiny_model.config


def test_load_refuses_a_folder_without_its_heads(tmp_path, tiny_model):
    folder = tiny_model.save(tmp_path / "m")
    (folder / HEADS_FILE).unlink()
    with pytest.raises(QAError, match=HEADS_FILE):
        DualEncoder.load(folder)


def test_a_model_saved_before_the_question_flag_still_loads(tmp_path, tiny_config):
    """Older saves: no flag option at all, projections in projection.safetensors."""
    model = DualEncoder.from_config(tiny_config, proj_dim=8, question_flag=False)
    folder = model.save(tmp_path / "old")
    options = json.loads((folder / OPTIONS_FILE).read_text())
    del options["question_flag"], options["flag_depth"]
    (folder / OPTIONS_FILE).write_text(json.dumps(options))
    (folder / HEADS_FILE).rename(folder / LEGACY_HEADS_FILE)
    again = DualEncoder.load(folder)
    assert not again.has_question_flag
    assert_close(again.score(TEXTS, TEXTS), model.score(TEXTS, TEXTS))


def _middle_layer(model, texts) -> torch.Tensor:
    """What the question flag reads for texts. Shape (n, features)."""
    batch = model.tokenize(texts, model.config.max_a_len)
    model.eval()  # as encoding runs: no dropout
    with torch.no_grad():
        out = model.a_encoder(**batch, output_hidden_states=True)
    hidden = out.hidden_states[model.flag_layer]
    return flag_features(hidden, batch["attention_mask"], model.config.flag_features)


def test_a_model_saved_by_qa_lib_0_1_loads_and_scores_as_it_did(tmp_path):
    """The committed fixture was saved before the redesign renamed the flag (``answer_prior``,
    ``prior_depth``, heads under ``a_prior.``): it loads, and scores exactly as it did then."""
    options = json.loads((FIXTURE / OPTIONS_FILE).read_text())
    assert "answer_prior" in options and "question_flag" not in options  # really the old layout
    folder = shutil.copytree(FIXTURE, tmp_path / "m")
    model = DualEncoder.load(folder)
    assert model.has_question_flag and model.config.flag_depth == options["prior_depth"]
    expected = json.loads((FIXTURE.parent / "model_v0_1_expected.json").read_text())
    a_emb, saved = model.encode_answers(expected["answers"]), torch.tensor(expected["a_emb"])
    # the towers and projections: exactly as 0.1 embedded them
    assert_close(a_emb[:, :-1], saved[:, :-1], atol=1e-6, rtol=1e-6)
    # the flag: 0.1 searched with -1 or 0 (p > 0.5 or not); today's ramp penalises the same texts
    assert torch.equal(a_emb[:, -1] < 0, saved[:, -1] < 0)
    q_emb = model.encode_questions(expected["questions"])
    towers = torch.tensor(expected["scores"]) - saved[:, -1][None, :]  # 0.1's scores, no flag
    assert_close(q_emb[:, :-1] @ a_emb[:, :-1].T, towers, atol=1e-6, rtol=1e-6)
    assert model.question_flag.probe.bias.item() == pytest.approx(0.3)  # the saved detector
