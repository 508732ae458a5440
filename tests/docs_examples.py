"""The shell examples of README.md and docs/*.md, read so that the tests can run them.

A fenced block tagged ``bash``, ``sh``, ``shell`` or ``console`` is a shell example (``yaml``,
``python`` and untagged blocks are not). Each example is either *run* by
``tests/test_doc_examples.py`` or *marked*: the last non-blank line before its opening fence is a
visible marker of the form ::

    *Not run by the tests: needs a GPU and the published weights.*

whose reasons come from :data:`REASONS` (``needs a GPU and the internet`` is two reasons, the verb
carrying over). A marked example is only checked to parse: each ``reallod`` command in it (also after
``torchrun``/``accelerate launch``/``python -m``) names an existing command and only options that
command has. An unmarked example whose commands the harness cannot run is an error naming the file
and line, and so is a marker with other words: a new example is run or visibly marked, never skipped.

A block is split into commands as a shell would for the subset the docs use: ``\\`` joins lines,
``# comments`` are dropped (outside quotes; a trailing ``# → FILE, FILE`` names files the command
writes, which the run checks), ``&&`` separates commands, ``> FILE`` sends stdout to a file,
``NAME=value`` alone sets a variable (``$NAME`` / ``${NAME}`` outside single quotes) for the rest of
the page, ``NAME=value cmd`` an environment variable for one command, and a trailing ``# ... K/N``
after a ``--shard 1/N`` command stands for the same command with the shards 2/N ... N/N. In a
``console`` block only the lines after a ``$ `` prompt are commands (the rest is their output).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}

REASONS = {
    "needs a GPU": "CUDA devices (--device cuda, vLLM, several processes on GPUs)",
    "needs the published weights": "Real-Model's MMDetection checkpoints, which cannot be downloaded here",
    "needs the internet": "pip, git or a model fetched from the Hugging Face hub",
    "starts a server": "a server that runs until stopped (vLLM, llama.cpp)",
    "runs the full install": "`make`: creates .venv and installs everything before it runs",
    "runs a benchmark": "minutes of CPU and gigabytes of generated data",
    "leaves out part of the command": "`...` stands for options the reader fills in",
}
"""The marker vocabulary: a marker's reasons must be keys of this table."""

MARKER_PREFIX = "*Not run by the tests:"
_MARKER = re.compile(r"^\*Not run by the tests: (?P<reasons>[^*]+)\.\*$")
_FENCE_OPEN = re.compile(r"^(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
_VAR = re.compile(r"^[A-Za-z_]\w*=")
_REF = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_ELLIPSIS_SHARD = re.compile(r"^\.\.\.\s*(\d+)/(\d+)$")
_WRITES = re.compile(r"^→\s*(.+)$")
LAUNCHERS = ("torchrun", "accelerate")


class DocExampleError(ValueError):
    """An example the harness cannot read, run or check; the message names the file and line."""


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the repository, e.g. "docs/data.md"
    line: int  # line of the opening fence, from 1
    lang: str
    lines: tuple[str, ...]  # the body
    marker: str | None = None  # the marker line before the fence, when there is one

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


@dataclass(frozen=True)
class Command:
    line: int  # doc line where the command starts
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    stdout: str | None = None  # `> FILE`
    writes: tuple[str, ...] = ()  # from a trailing `# → FILE, FILE`

    @property
    def text(self) -> str:
        """The command for messages (quotes only around words with blanks; not for a shell)."""
        words = [f"{k}={v}" for k, v in self.env] + [f'"{a}"' if " " in a else a for a in self.argv]
        return " ".join(words) + (f" > {self.stdout}" if self.stdout else "")


@dataclass
class Plan:
    """What the tests do with a block: ``run`` its commands, or only ``parse``-check the reallod ones."""

    block: Block
    kind: str  # "run" | "parse"
    reasons: tuple[str, ...] = ()
    commands: list[Command] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ reading
def read_blocks(text: str, doc: str) -> list[Block]:
    """The shell blocks of one Markdown text, each with the marker line before it (if any)."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE_OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group("fence"), m.group("lang").lower(), i
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            i += 1
        if lang in SHELL_LANGS:
            before = next((ln.strip() for ln in reversed(lines[:start]) if ln.strip()), "")
            marker = before if "not run by the tests" in before.lower() else None
            blocks.append(Block(doc, start + 1, lang, tuple(lines[start + 1:i]), marker))
        i += 1
    return blocks


def doc_blocks() -> list[Block]:
    return [b for path in DOC_FILES for b in read_blocks(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]


def marker_reasons(marker: str) -> tuple[str, ...]:
    """``*Not run by the tests: needs a GPU and the internet.*`` → ("needs a GPU", "needs the internet")."""
    m = _MARKER.match(marker)
    if not m:
        raise DocExampleError(f"a marker reads {MARKER_PREFIX} REASON[, REASON][ and REASON].* "
                              f"(REASON one of: {', '.join(REASONS)}); not {marker!r}")
    reasons, verb = [], "needs"
    for part in re.split(r",\s+(?:and\s+)?|\s+and\s+", m.group("reasons").strip()):
        first = part.split(" ", 1)[0]
        if first in {r.split(" ", 1)[0] for r in REASONS}:
            verb = first
        else:
            part = f"{verb} {part}"
        if part not in REASONS:
            raise DocExampleError(f"unknown reason {part!r} in the marker {marker!r} "
                                  f"(known: {', '.join(REASONS)})")
        reasons.append(part)
    return tuple(reasons)


# ------------------------------------------------------------------------------------------ splitting
def _split_comment(line: str) -> tuple[str, str]:
    """(code, comment) of one physical line: a `#` outside quotes, at the start or after a blank."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i + 1:].strip()
    return line, ""


def _expand(text: str, variables: dict[str, str], where: str) -> str:
    """``$NAME`` / ``${NAME}`` outside single quotes, from the block's assignments."""
    out, quote, i = [], None, 0
    while i < len(text):
        ch = text[i]
        if quote == "'":
            quote = None if ch == "'" else quote
        elif ch == "'" and quote is None:
            quote = "'"
        elif ch == '"':
            quote = None if quote == '"' else '"'
        elif ch == "$":
            m = _REF.match(text, i)
            if m:
                name = m.group(1) or m.group(2)
                if name not in variables:
                    raise DocExampleError(f"{where}: ${name} is not set earlier on the page")
                out.append(variables[name])
                i = m.end()
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def _logical_lines(block: Block) -> list[tuple[int, str, list[str]]]:
    """(doc line, code, comments) per logical line: backslash-continued lines joined."""
    result: list[tuple[int, str, list[str]]] = []
    pending: tuple[int, str, list[str]] | None = None
    for k, raw in enumerate(block.lines):
        if block.lang == "console":
            if not raw.startswith("$ ") and pending is None:
                continue  # output
            raw = raw[2:] if raw.startswith("$ ") else raw
        code, comment = _split_comment(raw)
        if pending is None:
            pending = (block.line + 1 + k, "", [])
        line_no, joined, comments = pending
        if comment:
            comments.append(comment)
        stripped = code.rstrip()
        if stripped.endswith("\\"):
            pending = (line_no, joined + stripped[:-1] + " ", comments)
            continue
        pending = None
        if (joined + code).strip():  # a comment-only line belongs to no command
            result.append((line_no, joined + code, comments))
    if pending is not None and pending[1].strip():
        result.append(pending)
    return result


def split_commands(block: Block, variables: dict[str, str] | None = None) -> list[Command]:
    """The block's commands, in order, with variables expanded; ``variables`` (the document's, set
    by earlier blocks) gets the block's assignments."""
    variables = {} if variables is None else variables
    commands: list[Command] = []
    for line_no, code, comments in _logical_lines(block):
        where = f"{block.doc}:{line_no}"
        code = _expand(code.replace("$(which reallod)", "reallod"), variables, where)
        try:
            lexer = shlex.shlex(code, posix=True, punctuation_chars=True)
            lexer.whitespace_split, lexer.commenters = True, ""
            words = list(lexer)
        except ValueError as e:
            raise DocExampleError(f"{where}: cannot split {code.strip()!r}: {e}") from None
        groups: list[list[str]] = [[]]
        for w in words:
            if w == "&&":
                groups.append([])
            elif w in ("|", "||", ";", "&", "(", ")", "<", ">>"):
                raise DocExampleError(f"{where}: {w!r} in {code.strip()!r}: the harness runs commands joined "
                                      "by && with an optional > FILE, nothing else")
            else:
                groups[-1].append(w)
        writes = tuple(f.strip() for c in comments if (m := _WRITES.match(c)) for f in m.group(1).split(","))
        shard_more = next((m for c in comments if (m := _ELLIPSIS_SHARD.match(c))), None)
        for group in groups:
            if not group:
                raise DocExampleError(f"{where}: an empty command in {code.strip()!r}")
            env = []
            while group and _VAR.match(group[0]):
                name, value = group.pop(0).split("=", 1)
                env.append((name, value))
            if not group:  # NAME=value alone: a variable of the block
                variables.update(env)
                continue
            stdout = None
            if ">" in group:
                k = group.index(">")
                if k != len(group) - 2:
                    raise DocExampleError(f"{where}: `> FILE` must end the command: {code.strip()!r}")
                stdout, group = group[k + 1], group[:k]
            cmd = Command(line_no, tuple(group), tuple(env), stdout, writes)
            commands.append(cmd)
            if shard_more is not None:
                commands += _more_shards(cmd, int(shard_more.group(1)), int(shard_more.group(2)), where)
    return commands


def _more_shards(cmd: Command, last: int, n: int, where: str) -> list[Command]:
    """`... --shard 1/N --out out/s1.jsonl   # ... N/N`: the commands of shards 2/N ... N/N."""
    argv = list(cmd.argv)
    if "--shard" not in argv or argv[argv.index("--shard") + 1] != f"1/{n}" or last != n:
        raise DocExampleError(f"{where}: `# ... {last}/{n}` follows a command without --shard 1/{n}")
    more = []
    for k in range(2, n + 1):
        new = list(argv)
        new[new.index("--shard") + 1] = f"{k}/{n}"
        if "--out" in new:  # out/s1.jsonl → out/sK.jsonl
            new[new.index("--out") + 1] = new[new.index("--out") + 1].replace("s1.", f"s{k}.")
        more.append(Command(cmd.line, tuple(new), cmd.env, cmd.stdout, cmd.writes))
    return more


# ------------------------------------------------------------------------------------------ the CLI
def reallod_args(argv: tuple[str, ...]) -> list[str] | None:
    """The words after ``reallod`` when the command runs the reallod CLI (directly, as ``python -m
    reallod``, or under ``torchrun`` / ``accelerate launch``), else None."""
    words = list(argv)
    if not words:
        return None
    prog = Path(words[0]).name
    if prog == "reallod":
        return words[1:]
    if prog.startswith("python") and words[1:3] == ["-m", "reallod"]:
        return words[3:]
    if prog in LAUNCHERS:
        for i, w in enumerate(words):
            if w == "reallod" or (w == "-m" and i + 1 < len(words) and words[i + 1] == "reallod"):
                return words[i + 2:] if w == "-m" else words[i + 1:]
    return None


def python_code(argv: tuple[str, ...]) -> str | None:
    """The code of ``python -c CODE`` (run in-process), else None."""
    if len(argv) == 3 and Path(argv[0]).name.startswith("python") and argv[1] == "-c":
        return argv[2]
    return None


def root_command() -> Any:
    import typer

    from reallod.cli import app

    return typer.main.get_command(app)


def resolve(args: list[str], root: Any | None = None) -> tuple[list[str], Any, list[str]]:
    """(command path, the click command, its words) for ``reallod ARGS``; ``realign INPUT ...`` is the
    hidden ``realign run``, as the realign group itself decides."""
    from reallod.cli.realign import realign_argv

    cmd = root if root is not None else root_command()
    path: list[str] = []
    rest = list(args)
    while hasattr(cmd, "list_commands"):
        ctx = cmd.context_class(cmd)
        if path == ["realign"]:
            rest = realign_argv(rest, cmd.list_commands(ctx))
        if not rest or rest[0].startswith("-"):
            raise DocExampleError(f"`reallod {' '.join(path)}` needs a subcommand "
                                  f"({', '.join(cmd.list_commands(ctx))})")
        sub = cmd.get_command(ctx, rest[0])
        if sub is None:
            raise DocExampleError(f"`reallod {' '.join([*path, rest[0]])}`: no such command "
                                  f"(`reallod {' '.join(path)}` has {', '.join(cmd.list_commands(ctx))})")
        path.append(rest.pop(0))
        cmd = sub
    return path, cmd, rest


def parse_check(args: list[str], root: Any | None = None) -> None:
    """The command exists and every option it uses is one of its options (click's own parser, as
    ``reallod`` runs it; values are not checked, files need not exist)."""
    path, cmd, words = resolve(args, root)
    name = "reallod " + " ".join(p for p in path if p != "run")
    ctx = cmd.context_class(cmd, info_name=name)
    parser = cmd.make_parser(ctx)
    try:
        _, rest, _ = parser.parse_args(list(words))
    except Exception as e:  # the parser's NoSuchOption / BadOptionUsage (typer vendors click)
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        raise DocExampleError(f"`{name}`: {message}") from None
    unknown = [w for w in rest if w.startswith("-") and len(w) > 1 and w != "..."]
    if unknown:  # commands that keep unknown options for themselves (train) refuse them later
        raise DocExampleError(f"`{name}`: no such option: {unknown[0]}")


OUTPUT_PARAMS = ("out", "out_dir", "fix", "report_dir", "show_dir", "work_dir", "metrics_out", "train", "val")
"""Parameters (option or argument) naming what a command writes: after a run that exits 0, each exists."""


def outputs(args: list[str], root: Any | None = None) -> list[str]:
    """The paths ``reallod ARGS`` names as outputs (the values of OUTPUT_PARAMS, as parsed)."""
    _, cmd, words = resolve(args, root)
    values, _, _ = cmd.make_parser(cmd.context_class(cmd, info_name="reallod")).parse_args(list(words))
    paths: list[str] = []
    for name in OUTPUT_PARAMS:
        value = values.get(name)
        paths += [str(v) for v in value] if isinstance(value, list | tuple) else [] if value is None else [str(value)]
    return paths


# ------------------------------------------------------------------------------------------ plans
def runnable(cmd: Command) -> bool:
    """Whether the harness can run this command: the reallod CLI, or ``python -c`` in-process."""
    args = reallod_args(cmd.argv)
    return (args is not None and Path(cmd.argv[0]).name == "reallod") or python_code(cmd.argv) is not None


def plan_block(block: Block, root: Any | None = None, variables: dict[str, str] | None = None) -> Plan:
    """Run it or parse-check it, and anything wrong with the block (unknown marker, a command the
    harness cannot run in an unmarked block, an option the command lacks), never raising."""
    plan = Plan(block, "parse" if block.marker else "run")
    try:
        if block.marker:
            plan.reasons = marker_reasons(block.marker)
        plan.commands = split_commands(block, variables)
    except DocExampleError as e:  # split_commands names the line, marker_reasons does not
        plan.problems.append(str(e) if str(e).startswith(f"{block.doc}:") else f"{block.id}: {e}")
        return plan
    if not plan.commands:
        plan.problems.append(f"{block.id}: a shell block without a command")
    for cmd in plan.commands:
        where = f"{block.doc}:{cmd.line}"
        if plan.kind == "run" and not runnable(cmd):
            plan.problems.append(
                f"{where}: the tests cannot run `{cmd.text}`: mark the block with a line "
                f"`{MARKER_PREFIX} REASON.*` before it (REASON one of: {', '.join(REASONS)}), or split it")
            continue
        args = reallod_args(cmd.argv)
        if args is not None:
            try:
                parse_check(args, root)
            except DocExampleError as e:
                plan.problems.append(f"{where}: {e}")
    return plan


def doc_plans(blocks: list[Block], root: Any | None = None) -> dict[str, Plan]:
    """The plan of each block (in document order), by block id. A document is read as one shell
    session: a variable set in a block (``M=models/real-model-b``) holds in the blocks after it."""
    root = root if root is not None else root_command()
    plans: dict[str, Plan] = {}
    variables: dict[str, dict[str, str]] = {}
    for block in blocks:
        plans[block.id] = plan_block(block, root, variables.setdefault(block.doc, {}))
    return plans


# ------------------------------------------------------------------------------------------ running
PLACEHOLDERS: dict[str, str] = {
    # Real-Data files ("your data"): copies of the bundled examples/realdata.jsonl
    "o365_base.jsonl": "realdata",
    "o365_base.jsonl.gz": "realdata.gz",
    "oi_base.jsonl": "realdata",
    "o365.jsonl": "realdata",
    "val.jsonl": "realdata",
    "Real-LOD-Data/real-data": "published",  # the published file names, each published_like(realdata.jsonl)
    # a published-style task list, detection annotations (COCO / LVIS / Objects365 json, OpenImages CSVs)
    "tasks.json": "tasks",
    "lvis_v1_train.json": "coco",
    "instances_train2017.json": "coco",
    "oidv6-train-annotations-bbox.csv": "openimages-boxes",
    "class-descriptions-boxable.csv": "openimages-classes",
    # image roots: copies of examples/images; one image; a file of expressions
    "/data/objects365": "images",
    "/data/o365": "images",
    "/data/coco": "images",
    "/data/images": "images",
    "openimages/train": "images",
    "photos": "images",
    "photo.jpg": "image",
    "queries.txt": "queries",
    # a base model to fine-tune: a tiny random causal LM (tests/finetune/tiny_models.py)
    "models/small-lm": "causal-lm",
    # detectors: the tiny random-initialised one (tests/conftest.py's tiny_model_dir)
    "models/real-model-t": "detector",
    "models/real-model-b": "detector",
    # benchmarks: small synthetic sets in each benchmark's layout (tests/eval/synthetic.py)
    "omnilabel/dataset_all_val_v0.1.3.json": "omnilabel:annotations",
    "omnilabel/images": "omnilabel:images",
    "d3/d3_pkl": "d3:annotations",
    "d3/d3_images": "d3:images",
    "OVDEval/annotations": "ovdeval:annotations",
    "OVDEval/images": "ovdeval:images",
}
"""What the docs use for "your data" → the fixture the tests put at that path (relative paths are made
in the temporary working directory; absolute ones are moved into it, as is every other absolute
path). Besides this table: every ``http(s)://`` URL becomes the local fake server, ``--config
offline|vllm`` a copy of the config whose roles all talk to it, ``--ray auto`` (your cluster) a local
Ray instance, and ``examples/...`` / ``configs/...`` the repository's own folders."""

PUBLISHED = ("real-data-o365-small.jsonl", "real-data-o365-base.jsonl", "real-data-o365-large.jsonl",
             "real-data-openimage-small.jsonl", "real-data-openimage-base.jsonl",
             "real-data-openimage-large.jsonl", "real-data-lvis.jsonl")
QUERIES = "the smiling astronaut\nthe white coffee cup\nthe cat\n"
REPO_FOLDERS = ("examples", "configs")

TRAIN_QUICK = ("schedule.max_steps=2", "data.synthetic.num_train=16", "data.synthetic.num_val=8",
               "eval.max_images=8", "data.num_workers=0", "train.batch_size=4")
"""`reallod train` runs a few minutes as documented: the tests append these --cfg-options (2 steps)."""

EXPECTED_EXIT: dict[str, int] = {}
"""Commands whose documented exit status is not 0, by "doc:line" (none today: with the bundled
example, `data validate` finds no problem and exits 0 as its comment says)."""


class Sandbox:
    """The temporary working directory of one example and the fixtures its words name."""

    def __init__(self, cwd: Path, *, server_url: str, configs: dict[str, Path], detector: Path) -> None:
        self.cwd, self.server_url, self.configs, self.detector = cwd, server_url, configs, detector
        self.scratch = cwd / ".fixtures"
        self._datasets: dict[str, dict[str, Path]] = {}

    # the words of a command --------------------------------------------------------------------
    def argv(self, args: list[str]) -> list[str]:
        """``reallod ARGS`` as the tests run it (the words after ``reallod``)."""
        out: list[str] = []
        for k, word in enumerate(args):
            prev = args[k - 1] if k else ""
            out += self._glob(self.word(word, prev))
        if out and out[0] == "train":
            out += [] if "--cfg-options" in out else ["--cfg-options"]
            out += TRAIN_QUICK
        return out

    def word(self, word: str, prev: str = "") -> str:
        if prev == "--config" and word in self.configs:
            return str(self.configs[word])
        if prev == "--ray" and word == "auto":
            return "local"
        if word.startswith(("http://", "https://")):
            return self.server_url
        for key in sorted(PLACEHOLDERS, key=len, reverse=True):
            if word == key or word.startswith(key.rstrip("/") + "/"):
                self.materialise(key)
                return str(self.cwd / word.lstrip("/")) if word.startswith("/") else word
        first = word.split("/", 1)[0]
        if first in REPO_FOLDERS and "/" in word:
            return str(ROOT / word)
        if word.startswith("/") and len(word) > 1:
            top = self.cwd / word.lstrip("/").split("/", 1)[0]
            if "/" in word.lstrip("/"):
                top.mkdir(parents=True, exist_ok=True)  # /tmp exists on any machine
            return str(self.cwd / word.lstrip("/"))
        return word

    def _glob(self, word: str) -> list[str]:
        import glob

        if not any(c in word for c in "*?["):
            return [word]
        return sorted(glob.glob(word, root_dir=self.cwd)) or [word]

    # the fixtures -------------------------------------------------------------------------------
    def materialise(self, key: str) -> Path:
        """Put the fixture of a PLACEHOLDERS key at its path (once)."""
        import gzip
        import shutil

        target = self.cwd / key.lstrip("/")
        if target.exists() or target.is_symlink():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        kind, _, part = PLACEHOLDERS[key].partition(":")
        examples = ROOT / "examples"
        if kind == "realdata":
            shutil.copy(examples / "realdata.jsonl", target)
        elif kind == "realdata.gz":
            target.write_bytes(gzip.compress((examples / "realdata.jsonl").read_bytes()))
        elif kind == "published":
            target.mkdir()
            for name in PUBLISHED:
                (target / name).write_text(published_like(examples / "realdata.jsonl"))
        elif kind == "tasks":
            shutil.copy(examples / "tasks.json", target)
        elif kind == "coco":
            shutil.copy(examples / "annotations.json", target)
        elif kind == "images":
            shutil.copytree(examples / "images", target)
        elif kind == "image":
            shutil.copy(examples / "images" / "astronaut.jpg", target)
        elif kind == "queries":
            target.write_text(QUERIES)
        elif kind == "detector":
            target.symlink_to(self.detector, target_is_directory=True)
        elif kind == "causal-lm":
            from tests.finetune.tiny_models import save_tiny_causal_lm

            save_tiny_causal_lm(target)
        elif kind.startswith("openimages"):
            boxes, classes = openimages_csvs(examples / "annotations.json")
            target.write_text(boxes if kind == "openimages-boxes" else classes)
        else:
            source = self.dataset(kind)[part]
            (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
        return target

    def dataset(self, name: str) -> dict[str, Path]:
        """A small synthetic benchmark set in its own layout: {"annotations": ..., "images": ...}."""
        if name not in self._datasets:
            self._datasets[name] = synthetic_benchmark(name, self.scratch / name)
        return self._datasets[name]


def published_like(realdata: Path) -> str:
    """The bundled example shaped like a published file, for the selection examples to select
    something: every record has the three published sources (``vlm_short``'s pairs copied to the
    ``vlm_long`` and ``llm`` it lacks), and the cat is a dog (the published LVIS file has dogs)."""
    import copy
    import json

    lines = []
    for line in realdata.read_text().splitlines():
        record = json.loads(line)
        for source in ("vlm_long", "llm"):
            record["pairs"].setdefault(source, copy.deepcopy(record["pairs"]["vlm_short"]))
        for pairs in record["pairs"].values():
            for pair in pairs:
                pair["category"] = "dog" if pair["category"] == "cat" else pair["category"]
        lines.append(json.dumps(record))
    return "\n".join(lines) + "\n"


def openimages_csvs(coco_json: Path) -> tuple[str, str]:
    """The bundled example's boxes as OpenImages CSVs (box CSV, class-description CSV): ImageID is the
    file name without ``.jpg``, coordinates are fractions of the image size."""
    import json

    coco = json.loads(coco_json.read_text())
    images = {img["id"]: img for img in coco["images"]}
    rows = ["ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,"
            "IsDepiction,IsInside"]
    for a in coco["annotations"]:
        img = images[a["image_id"]]
        x, y, w, h = a["bbox"]
        W, H = img["width"], img["height"]
        rows.append(f"{Path(img['file_name']).stem},xclick,/m/{a['category_id']},1,{x / W:.6f},{(x + w) / W:.6f},"
                    f"{y / H:.6f},{(y + h) / H:.6f},0,0,{a.get('iscrowd', 0)},0,0")
    classes = [f"/m/{c['id']},{c['name']}" for c in coco["categories"]]
    return "\n".join(rows) + "\n", "\n".join(classes) + "\n"


def synthetic_benchmark(name: str, folder: Path) -> dict[str, Path]:
    """OmniLabel (a val json), D³ (the four pickles) or OVDEval (a folder of subset jsons), with images."""
    import json

    from tests.eval import synthetic as syn

    images = folder / "images"
    if name == "omnilabel":
        gt = syn.omnilabel_gt(1, n_images=4)
        syn.write_images(images, gt["images"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "gt.json").write_text(json.dumps(gt))
        return {"annotations": folder / "gt.json", "images": images}
    if name == "d3":
        raw = syn.d3_pickles(folder / "pkl", seed=3, n_groups=2, images_per_group=2)
        syn.write_images(images, list(raw["images"].values()))
        return {"annotations": folder / "pkl", "images": images}
    if name == "ovdeval":
        (folder / "annotations").mkdir(parents=True, exist_ok=True)
        for k, subset in enumerate(("color", "material")):
            sub = syn.ovdeval_subset(10 + k, n_images=2)
            for img in sub["images"]:
                img["file_name"] = f"{subset}/{img['file_name']}"
            syn.write_images(images, sub["images"])
            (folder / "annotations" / f"{subset}.json").write_text(json.dumps(sub))
        return {"annotations": folder / "annotations", "images": images}
    raise KeyError(name)
