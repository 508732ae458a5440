"""The README and the manual in docs/ hold together: links resolve, every command is documented."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"`+[^`\n]*`+")
# [text](target) and ![alt](target), with an optional "title"; the text may not nest brackets
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_EXTERNAL = ("http://", "https://", "mailto:")


def _relative_links(text: str) -> list[str]:
    text = _CODE_SPAN.sub("", _FENCE.sub("", text))
    links = []
    for target in _LINK.findall(text):
        if target.startswith(_EXTERNAL) or target.startswith("#"):
            continue
        links.append(target)
    return links


def test_link_extraction() -> None:
    text = (
        "[a](docs/x.md) ![b](docs/y.png \"title\") [c](https://e.org) [d](#top) [e](mailto:a@b.c)\n"
        "[f](z.md#part) `[g](in-code.md)`\n```bash\n[h](in-fence.md)\n```\n"
    )
    assert _relative_links(text) == ["docs/x.md", "docs/y.png", "z.md#part"]


def test_doc_files_exist() -> None:
    assert (ROOT / "README.md").is_file()
    assert len(DOC_FILES) > 1, "no docs/*.md pages"


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in _relative_links(doc.read_text(encoding="utf-8")):
        path = unquote(target.split("#", 1)[0])
        if not (doc.parent / path).exists():
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)}: links to missing files: {broken}"


_REPO_PATH = re.compile(r"(?:src|tests|benchmarks|configs|examples|docs)/[\w./-]*")


def _repo_paths(text: str) -> list[str]:
    """Paths into this checkout named in the prose's code spans (a fence's commands may create files)."""
    spans = _CODE_SPAN.findall(_FENCE.sub("", text))
    return [m.group(0).rstrip(".") for span in spans for m in _REPO_PATH.finditer(span)
            if m.start() == 0 or span[m.start() - 1] in " (\"'`"]


def test_repo_path_extraction() -> None:
    text = ("`tests/llm/x.py::test_a` and `make -C src/` (`docs/a.md`)\n```bash\nls `examples/out/b`\n```\n"
            "`my/tests/c.py`")
    assert _repo_paths(text) == ["tests/llm/x.py", "src/", "docs/a.md"]


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_repo_paths_exist(doc: Path) -> None:
    missing = [p for p in _repo_paths(doc.read_text(encoding="utf-8")) if not (ROOT / p).exists()]
    assert not missing, f"{doc.relative_to(ROOT)}: names files this checkout lacks: {missing}"


def test_the_docs_name_repo_paths() -> None:
    assert sum(len(_repo_paths(d.read_text(encoding="utf-8"))) for d in DOC_FILES) > 50


def test_readme_links_every_docs_page() -> None:
    readme_links = {unquote(t.split("#", 1)[0]) for t in _relative_links((ROOT / "README.md").read_text("utf-8"))}
    pages = {f"docs/{p.name}" for p in DOC_FILES[1:]}
    assert not pages - readme_links, f"docs pages the README does not link: {sorted(pages - readme_links)}"


def _leaf_command_paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The paths of the visible leaf commands under a click command (typer may vendor its own click)."""
    if not hasattr(command, "list_commands"):  # a group has subcommands, a leaf has none
        return [path]
    ctx = command.context_class(command)
    paths = []
    for name in command.list_commands(ctx):
        sub = command.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        paths.extend(_leaf_command_paths(sub, (*path, name)))
    return paths


def test_every_command_is_documented() -> None:
    from reallod.cli import app

    commands = _leaf_command_paths(typer.main.get_command(app))
    assert len(commands) > 5, commands
    text = " ".join(re.sub(r"\s+", " ", doc.read_text(encoding="utf-8")) for doc in DOC_FILES)
    missing = [" ".join(("reallod", *path)) for path in commands if " ".join(("reallod", *path)) not in text]
    assert not missing, f"commands not documented in README.md or docs/*.md: {missing}"
