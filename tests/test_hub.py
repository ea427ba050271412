from __future__ import annotations

import pytest

from qa_lib import DualEncoder, QAError


def test_missing_model_folder_and_offline_hub_id(tmp_path):
    with pytest.raises(QAError, match="not a model folder"):
        DualEncoder.from_config(model=str(tmp_path / "nope"))
    with pytest.raises(QAError, match="Hugging Face hub"):
        DualEncoder.from_config(model="someone/no-such-model")
