"""Copy the repository's address from pyproject.toml into the notebooks and the README.

``[project.urls] Repository`` in pyproject.toml is the one place the address is written. Every
notebook's "Open in Colab" badge and Colab install cell, and the README's badges, are derived from
it. After changing it, run ``make repo-url`` (this script); ``--check`` only lists what differs
(tests/test_repo_url.py runs the check).

    python tools/repo_url.py [--check] [--root FOLDER]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
# the links derived from the address, and the patterns that find them wherever they point now
BADGE = re.compile(r"https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/[\w.-]+/")
INSTALL = re.compile(r"git\+https://github\.com/[\w.-]+/[\w.-]+?(?=[\"'\s@#]|$)")


def repository_url(root: Path = ROOT) -> str:
    """``[project.urls] Repository`` of ``root/pyproject.toml``, e.g. https://github.com/o/n."""
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    url = project["urls"]["Repository"].rstrip("/")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise SystemExit(f"pyproject.toml: Repository must be https://github.com/OWNER/NAME: {url}")
    return url


def rewrite_text(text: str, url: str) -> str:
    """``text`` with every Colab badge and git install link pointing at ``url``."""
    owner_name = url.removeprefix("https://github.com/")
    text = BADGE.sub(f"https://colab.research.google.com/github/{owner_name}/blob/main/", text)
    return INSTALL.sub(f"git+{url}", text)


def _rewrite_notebook(path: Path, url: str) -> bool:
    """Rewrite the links in a notebook's cell sources; return whether anything changed."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    changed = False
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        new = rewrite_text(source, url)
        if new != source:
            cell["source"] = new.splitlines(keepends=True)
            changed = True
    if changed:
        text = json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"
        path.write_text(text, encoding="utf-8")
    return changed


def sync(root: Path = ROOT, check: bool = False) -> list[Path]:
    """Point every link at pyproject's address; return the files that differed.

    Args:
        root: the project folder.
        check: only report, change nothing.
    """
    url = repository_url(root)
    stale = []
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        source = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
        if rewrite_text(source, url) != source:
            stale.append(path)
            if not check:
                _rewrite_notebook(path, url)
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    if rewrite_text(text, url) != text:
        stale.append(readme)
        if not check:
            readme.write_text(rewrite_text(text, url), encoding="utf-8")
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="list stale files, change nothing")
    parser.add_argument("--root", type=Path, default=ROOT, help="the project folder")
    args = parser.parse_args(argv)
    stale = sync(args.root, args.check)
    verb = "differ from" if args.check else "now point at"
    for path in stale:
        print(f"{path.relative_to(args.root)} {verb} {repository_url(args.root)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
