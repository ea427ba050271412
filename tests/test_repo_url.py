"""The repository's address is written once (pyproject.toml); every badge and link follows it."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("repo_url", ROOT / "tools" / "repo_url.py")
repo_url = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(repo_url)


LINK = re.compile(
    r"https://colab\.research\.google\.com/github/\S+?\.ipynb|git\+https://\S+?(?=\")"
)


def _links(text: str) -> list[str]:
    return LINK.findall(text)


def test_every_badge_and_install_link_equals_pyproject_url():
    url = repo_url.repository_url()
    assert repo_url.sync(check=True) == [], "run make repo-url"
    owner_name = url.removeprefix("https://github.com/")
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        header, install = "".join(cells[0]["source"]), "".join(cells[2]["source"])
        badge = (
            f"https://colab.research.google.com/github/{owner_name}/blob/main/notebooks/{path.name}"
        )
        assert badge in header, path.name  # the badge opens this very notebook
        assert f'"qa_lib[course] @ git+{url}"' in install, path.name
    readme = (ROOT / "README.md").read_text()
    badges = re.findall(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/", readme)
    assert badges and set(badges) == {owner_name}


def test_sync_rewrites_every_link_when_the_url_changes(tmp_path):
    for name in ("notebooks", "README.md", "pyproject.toml"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    pyproject = tmp_path / "pyproject.toml"
    old = repo_url.repository_url()
    pyproject.write_text(pyproject.read_text().replace(old, "https://github.com/someone/fork"))
    stale = repo_url.sync(tmp_path, check=True)
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert len(stale) == len(notebooks) + 1  # every notebook and the README
    assert repo_url.sync(tmp_path) == stale and repo_url.sync(tmp_path, check=True) == []
    files = [*sorted((tmp_path / "notebooks").glob("*.ipynb")), tmp_path / "README.md"]
    texts = [p.read_text() for p in files]
    links = [link for text in texts for link in _links(text)]
    assert links and all("someone/fork" in link for link in links)
    assert not any("qa-dual-encoder/qa-dual-encoder" in link for link in links)
