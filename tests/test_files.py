from __future__ import annotations

import json

import pytest

from qa_lib.files import atomic_file, write_atomic, write_json


def test_write_atomic_and_json(tmp_path):
    path = write_atomic(tmp_path / "sub" / "a.bin", b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    write_json(tmp_path / "m.json", {"x": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": 1}


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = write_atomic(tmp_path / "model.bin", b"old, complete")
    with pytest.raises(RuntimeError), atomic_file(path) as handle:
        handle.write(b"new, half")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old, complete"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]
