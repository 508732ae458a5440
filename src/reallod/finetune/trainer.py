"""``reallod agent finetune``: LoRA-tune a student for one role on an ``sft-data`` folder.

TRL's :class:`~trl.SFTTrainer` does the training (transformers' Trainer underneath, so accelerate
spreads it over GPUs under ``accelerate launch``), with a ``peft`` LoRA config; nothing of what it does
is written here. What this module adds is what TRL cannot know:

- **the exact tokens the agent will use.** Text roles are tokenized here, not by TRL: the prompt with
  :func:`~reallod.llm.backends.transformers_backend.prompt_ids` (the model's chat template, or the plain
  completion prompt of a base model such as the offline Gemma GGUF — what the in-process backend feeds),
  the reply with :func:`~reallod.llm.backends.transformers_backend.reply_ids` (the pieces the constrained
  decoder forces and chooses) and the end-of-sequence token. TRL receives ``input_ids`` and a
  ``completion_mask`` and, with ``completion_only_loss``, puts the loss on the reply only. VLM examples
  go to TRL as conversational prompt/completion pairs with their images; TRL applies the processor's
  chat template, as the backend does when it asks the VLM.
- **loading any base:** a hub id or folder, or a GGUF file (dequantized at load: transformers cannot
  train packed GGUF weights), as a causal LM for the text roles and an image-text-to-text model for the
  VLM role; one that cannot load is a one-line error naming it.
- **resume and refuse:** one run at a time on an ``OUT`` (a lock beside ``finetune.json``, held by the
  main process for the whole run: a second is refused at once, naming the first's pid); checkpoints go
  to ``OUT/checkpoints`` every ``save_steps`` steps; running the same command again resumes from the
  last one (a Ctrl-C saves one first) as if never stopped (one at an epoch's end first runs the
  validation the stop cut off), and one stopped while saving the adapter or merging redoes the save and
  the merge; a finished fine-tune (``finetune.json`` says so, written last) is never overwritten unless
  ``overwrite`` says so: the same command again says it is done, other settings or data are refused;
  other settings in an unfinished ``OUT`` are refused rather than mixed, and so are other examples (a
  dataset rebuilt in place: the run records a hash of the role's split files); an ``OUT`` that is a file or lies inside an sft-data folder
  (which ``sft-data --overwrite`` deletes), a ``--base`` inside ``OUT``, and with ``overwrite`` an ``OUT``
  that holds anything a fine-tune does not write, are refused before the model loads.

``OUT`` ends as a PEFT adapter folder (``adapter_config.json``, ``adapter_model.safetensors``, the
tokenizer) with ``finetune.json`` (settings, data, losses: train per logging step, validation per epoch)
and, with ``merge``, ``OUT/merged``: the base with the adapter merged, a plain transformers folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from reallod.agent.decisions import SPECS
from reallod.data.io import iter_lines
from reallod.errors import ConfigError, DataError, Interrupted, OutOfMemory, out_of_memory, smaller_batches
from reallod.finetune.run_file import RUN_FILE, has_json_key
from reallod.finetune.sft_data import MANIFEST, open_view, read_manifest, role_files
from reallod.hub import config_errors, resolve_source
from reallod.llm.backends.gguf_copy import keep_copy, load_copy
from reallod.runs.journal import JournalBusy, JournalLock, lock_holder, lock_journal, lock_path_for
from reallod.runs.launch import launch_place

CHECKPOINTS = "checkpoints"
MERGED = "merged"
OWN_FILES: tuple[str, ...] = (
    "adapter_config.json", "adapter_model.*", "README.md", "training_args.bin", "tokenizer*",
    "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt", "chat_template.*",
    "*processor_config.json", "*.model", "*.tiktoken")
"""The files a fine-tune writes into ``OUT`` besides ``finetune.json`` (peft's adapter and model card, the
trainer's arguments, the tokenizer or processor in the names transformers gives them), with its folders
``checkpoints/`` and ``merged/``: all that ``--overwrite`` deletes; anything else in ``OUT`` is refused."""
LOCK = lock_path_for(RUN_FILE).name
"""``finetune.json.lock``: the lock of the run writing ``OUT``, kept when ``--overwrite`` empties it."""


@dataclass
class FinetuneOptions:
    data: Path
    role: str
    base: str  # hub id, model folder, or a .gguf file
    out: Path
    gguf_file: str | None = None  # a GGUF file inside the ``base`` folder
    epochs: float = 3.0
    max_steps: int | None = None
    learning_rate: float = 2e-4
    batch_size: int = 4
    grad_accum: int = 1
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_layers: int | None = None  # adapt only the last N transformer layers (None: all)
    target_modules: str = "all-linear"
    max_length: int = 2048
    save_steps: int = 50
    logging_steps: int = 10
    gradient_checkpointing: bool | None = None  # None: on a GPU only
    dtype: str = "auto"  # auto: bf16 on a GPU that has it, else fp32
    trust_remote_code: bool = False
    merge: bool = False
    overwrite: bool = False
    seed: int = 0
    progress: bool = True

    def settings(self) -> dict[str, Any]:
        """What must match for a rerun to resume (not how long it trains nor how it reports)."""
        keep = ("data", "role", "base", "gguf_file", "learning_rate", "batch_size", "grad_accum", "lora_r",
                "lora_alpha", "lora_dropout", "lora_layers", "target_modules", "max_length", "seed")
        d = asdict(self)
        d["data"] = Path(d["data"]).resolve()  # the same folder however it is written (a job run elsewhere)
        if d["base"] and Path(d["base"]).exists():
            d["base"] = Path(d["base"]).resolve()
        return {k: str(d[k]) if isinstance(d[k], Path) else d[k] for k in keep}


def _out_of_memory(what: str, opts: FinetuneOptions, step: int, out: Path) -> OutOfMemory:
    """What to change when a fine-tuning step ran out of GPU memory. Its checkpoints resume only with the
    settings they were made with, the batch size among them, so the way on is to start over."""
    if smaller := smaller_batches(opts.batch_size, opts.grad_accum):
        fix = (f"start over with --overwrite --batch-size {smaller[0]} --grad-accum {smaller[1]} (the same examples "
               "per step in smaller batches)")
    else:
        fix = "start over with --overwrite and a smaller --max-length or --lora-layers, or use a GPU with more memory"
    return OutOfMemory(f"{what} (fine-tuning at step {step} with --batch-size {opts.batch_size}); the checkpoints in "
                       f"{out / CHECKPOINTS} resume only with the settings they were made with: {fix}")


@dataclass
class FinetuneResult:
    out: Path
    steps: int
    train_examples: int
    val_examples: int
    skipped_too_long: int
    train_loss: float | None
    val_losses: list[dict[str, float]] = field(default_factory=list)  # {"epoch", "loss"} per evaluation
    resumed_from: str | None = None
    merged: Path | None = None
    seconds: float = 0.0
    tokens: int = 0  # tokens the training steps of this run went through (prompt and reply; TRL's count)
    train_seconds: float = 0.0  # the training loop's own time (no loading, no saving)
    finished_before: bool = False  # OUT held this fine-tune finished already: nothing was trained (as recorded)


def resolve_base(base: str, gguf_file: str | None) -> tuple[str, str | None]:
    """``path/model.gguf`` → (folder, file name); anything else as given."""
    p = Path(base).expanduser()
    if gguf_file is None and p.suffix == ".gguf":
        if not p.is_file():
            raise ConfigError(f"--base {base}: no such GGUF file")
        return str(p.parent), p.name
    return base, gguf_file


def load_base(base: str, gguf_file: str | None, *, vision: bool, dtype: str = "auto",
              trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer or processor) to train; a ConfigError naming the model when it cannot load (a local
    GGUF language model from the copy its first float32 load kept: :mod:`reallod.llm.backends.gguf_copy`)."""
    import torch
    import transformers as tf
    from safetensors import SafetensorError

    from reallod.llm.backends.transformers_backend import gguf_identity

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
        kwargs["quantization_config"] = tf.GgufConfig(dequantize=True)  # packed GGUF weights cannot train
    if dtype == "auto":
        dtype = "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    what = f"{base}" + (f" ({gguf_file})" if gguf_file else "")
    try:
        base = resolve_source(base, "GGUF model" if gguf_file else "model")  # a typo: at once, not after retries
    except ConfigError as e:
        raise ConfigError(f"--base {e}") from None
    if os.path.isdir(base):  # peft names the adapter's base by it, and asked the hub for a relative one at each save
        base = os.path.abspath(base)
    identity = None if vision else gguf_identity(base, gguf_file)
    if identity and (kept := load_copy(identity, getattr(torch, dtype), base)) is not None:
        return kept[1], kept[0]
    try:
        if vision:
            processor = tf.AutoProcessor.from_pretrained(base, **{k: v for k, v in kwargs.items()
                                                                   if k != "quantization_config"})
            model = tf.AutoModelForImageTextToText.from_pretrained(base, dtype=getattr(torch, dtype), **kwargs)
        else:
            processor = tf.AutoTokenizer.from_pretrained(base, **{k: v for k, v in kwargs.items()
                                                                  if k != "quantization_config"})
            model = tf.AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype), **kwargs)
    except (OSError, ValueError, ImportError, KeyError, RuntimeError, TypeError, *config_errors(),
            SafetensorError) as e:  # SafetensorError: a damaged weights file
        kind = "vision-language (image-text-to-text)" if vision else "causal language"
        raise ConfigError(f"cannot load the base model {what} as a {kind} model: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from e
    if identity:
        keep_copy(identity, processor, model)  # the next fine-tune of this GGUF loads it in seconds
    return model, processor


def split_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of a dataset split; a byte that is not UTF-8 is an error
    naming the file and the line (decoding the whole file named neither, only an offset in it)."""
    for lineno, raw in iter_lines(path):
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); rebuild the "
                            "split with `reallod agent sft-data` or fix that line", path=str(path),
                            line=lineno) from None


def _text_rows(path: Path, tokenizer: Any, role: str, max_length: int) -> tuple[list[dict[str, Any]], int]:
    """Tokenized rows (``input_ids``, ``completion_mask``) of one split; also how many were too long."""
    from reallod.llm.backends.transformers_backend import prompt_ids, reply_ids

    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the base model's tokenizer has no end-of-sequence token; a student could not learn "
                          "where its reply ends")
    rows, too_long = [], 0
    for lineno, line in split_lines(path):
        try:
            messages = json.loads(line)["messages"]
            if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
                raise ValueError(f'"messages" must be a list of messages, got {json.dumps(messages)[:60]}')
            prompt, reply = messages[:-1], messages[-1]
            if reply.get("role") != "assistant":
                raise ValueError("the last message is not the assistant's reply")
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise DataError(f"not an sft-data example: {e}", path=str(path), line=lineno) from None
        p = prompt_ids(tokenizer, prompt)
        c = [*reply_ids(tokenizer, reply["content"], SPECS[role].schema), eos]
        if len(p) + len(c) > max_length:
            too_long += 1
            continue
        rows.append({"input_ids": p + c, "completion_mask": [0] * len(p) + [1] * len(c)})
    return rows, too_long


def _vision_rows(path: Path, data: Path) -> list[dict[str, Any]]:
    """Conversational prompt/completion rows with their images, for TRL's vision collator."""
    rows = []
    for lineno, line in split_lines(path):
        try:
            ex = json.loads(line)
            messages = ex["messages"]
            images = [open_view(data, rel) for rel in ex.get("images") or []]
        except (DataError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"not a usable VLM example: {e}", path=str(path), line=lineno) from None
        rows.append({"prompt": messages[:-1], "completion": messages[-1:], "images": images})
    return rows


def _read_run(out: Path) -> dict[str, Any] | None:
    path = out / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"invalid JSON: {e}", path=str(path)) from None


def _write_run(out: Path, record: dict[str, Any]) -> None:
    tmp = out / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / RUN_FILE)


def data_hash(files: dict[str, Path]) -> str:
    """A hash of a role's example files (``{"train": ..., "val": ...}``): what a resume compares, since
    ``sft-data --overwrite`` rebuilds a dataset in place from the same traces grown longer."""
    h = hashlib.blake2b(digest_size=16)
    for split, path in sorted(files.items()):
        h.update(f"{split}:{path.stat().st_size}:".encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def _manifest_view(manifest: dict[str, Any]) -> dict[str, Any]:
    """What identifies a dataset's content (its traces, selection, split, prompts), as the run records it."""
    keys = ("source", "labelled", "config", "traces", "val_images", "templates")
    return json.loads(json.dumps({k: manifest.get(k) for k in keys}))  # as finetune.json reads back


def prepare_out(opts: FinetuneOptions, manifest: dict[str, Any] | None = None,
                digest: str | None = None) -> tuple[str | None, bool]:
    """Check ``OUT`` against this run on the data of ``manifest`` whose role's examples hash to ``digest``
    (:func:`data_hash`): (the checkpoint to resume from, if any; whether ``OUT`` is to be replaced — by
    the caller, once the base model and the data have loaded, so a run that cannot start leaves the old
    fine-tune as it was). A finished fine-tune of these settings and data raises :class:`_Finished`."""
    out = Path(opts.out)
    check_out(out, Path(opts.data), opts.base)
    run = _read_run(out)
    # finished only once finetune.json says so: it is written last, after the adapter and the merge, so a
    # process killed while saving them left an unfinished run that resumes and saves again
    finished = (run or {}).get("status") == "finished"
    if out.exists() and opts.overwrite:
        if run is None and not (out / "adapter_config.json").is_file() and _entries(out):
            raise ConfigError(f"{out} is not a fine-tune folder (no {RUN_FILE}); --overwrite replaces only "
                              "fine-tunes: choose another --out")
        foreign = _foreign_entry(out)
        if foreign is not None:
            raise ConfigError(f"--overwrite would delete {foreign}, which a fine-tune does not write (a dataset, "
                              f"a config or a model saved inside the fine-tune, say): move it out of {out} or "
                              "give another --out")
        return None, True
    if finished:
        assert run is not None
        differs = _finished_differences(run, opts, manifest, digest)
        if not differs:  # the same command again (a scheduler's rerun after a kill as the process exited)
            raise _Finished(run)
        raise ConfigError(f"{out} holds a finished fine-tune with other settings ({', '.join(differs)}; see "
                          f"{out / RUN_FILE}); pass --overwrite to replace it, or choose another --out")
    if run is not None:
        if run.get("settings") != opts.settings():
            diff = sorted(k for k in opts.settings() if (run.get("settings") or {}).get(k) != opts.settings()[k])
            raise ConfigError(f"{out} holds an unfinished fine-tune with other settings ({', '.join(diff)}); "
                              "rerun it with the same settings to resume, or pass --overwrite to start over")
        if manifest is not None and not _same_data(run, manifest, digest, opts.role):
            raise ConfigError(f"{out} holds an unfinished fine-tune of another dataset: the {opts.role} examples "
                              f"of {opts.data} changed since it started (sft-data --overwrite rebuilt it); pass "
                              "--overwrite to start over on them, or rebuild the data it started on")
        return _last_complete_checkpoint(out / CHECKPOINTS), False
    if out.exists() and (not out.is_dir() or _entries(out)):
        raise ConfigError(f"{out} exists and is not a fine-tune folder; choose another --out")
    return None, False


class _Finished(Exception):
    """``OUT`` holds this very fine-tune, finished: its ``finetune.json`` record is ``args[0]``."""

    @property
    def record(self) -> dict[str, Any]:
        return self.args[0]


def _training_length(opts: FinetuneOptions) -> dict[str, Any]:
    """How long a run trains: not a setting a resume must match (a run may be extended), but what makes a
    finished fine-tune the one a rerun asks for."""
    return {"epochs": opts.epochs, "max_steps": opts.max_steps}


def _finished_differences(run: dict[str, Any], opts: FinetuneOptions, manifest: dict[str, Any] | None,
                          digest: str | None) -> list[str]:
    """What a finished fine-tune's record says otherwise than this run would (settings, how long it trains,
    the merge, the data): none, and a rerun of the same command has nothing to do. A record of an older
    reallod, without the training length, differs."""
    mine, had = opts.settings(), run.get("settings") or {}
    differs = [k for k in mine if had.get(k) != mine[k]]
    length = run.get("length") or {}
    differs += [k for k, v in _training_length(opts).items() if k not in length or length[k] != v]
    if bool(run.get("merged")) != opts.merge:
        differs.append("merge")
    if manifest is not None and not _same_data(run, manifest, digest, opts.role):
        differs.append(f"data: the {opts.role} examples of {opts.data} changed")
    return differs


def _entries(out: Path) -> list[Path]:
    """What ``OUT`` holds besides the lock of the run looking at it."""
    return [e for e in out.iterdir() if e.name != LOCK]


def _same_data(run: dict[str, Any], manifest: dict[str, Any], digest: str | None, role: str) -> bool:
    """Whether an unfinished run resumes on the examples it started on: the same dataset (traces, split,
    templates) and the same examples (their hash; a run of an older reallod recorded none, only how many
    it trained on and how many were too long)."""
    started_on = run.get("data_manifest")
    if started_on is not None and started_on != _manifest_view(manifest):
        return False
    if run.get("data_hash") is not None:
        return digest is None or run["data_hash"] == digest
    counts = run.get("examples")
    if not isinstance(counts, dict):
        return True
    have = sum(((manifest.get("examples") or {}).get(role) or {}).values())
    return sum(counts.values()) + int(run.get("skipped_too_long") or 0) == have


def check_out(out: Path, data: Path, base: str | None = None) -> None:
    """Refuse an ``OUT`` that is a file, lies inside an sft-data folder (``sft-data --overwrite`` would
    delete the fine-tune with it), holds the data or the base model (``--overwrite`` would delete them, a
    merge replaces ``OUT/merged``) — before any model loads."""
    out, data = out.resolve(), data.resolve()
    if base and Path(base).exists() and Path(base).resolve().is_relative_to(out):
        raise ConfigError(f"--base {base} lies inside --out {out}, which the fine-tune writes (--overwrite deletes "
                          "it whole, --merge replaces OUT/merged): copy the base elsewhere or choose another --out")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder: give a folder for the adapter")
    for folder in (out, *out.parents):
        if _is_dataset(folder):
            raise ConfigError(f"--out {out} lies inside the sft-data folder {folder}, which `reallod agent "
                              "sft-data --overwrite` replaces whole: choose an --out outside it")
    if data.is_relative_to(out):
        raise ConfigError(f"--out {out} holds the data {data}: choose an --out outside it")


def _foreign_entry(out: Path) -> Path | None:
    """The first entry of a fine-tune folder that a fine-tune does not write (see :data:`OWN_FILES`), or
    None: what ``--overwrite`` must not delete."""
    for entry in sorted(out.iterdir()):
        if entry.is_symlink():
            return entry
        if entry.is_dir():
            if entry.name not in (CHECKPOINTS, MERGED):
                return entry
        elif entry.name not in (RUN_FILE, f".{RUN_FILE}.tmp", LOCK) and not any(fnmatch(entry.name, p)
                                                                             for p in OWN_FILES):
            return entry
    return None


def _is_dataset(folder: Path) -> bool:
    """Whether ``folder`` holds an sft-data manifest (of any format version)."""
    return has_json_key(folder / MANIFEST, "sft_format")


def _last_complete_checkpoint(folder: Path) -> str | None:
    """The newest ``checkpoint-N`` that holds its trainer state. transformers writes that file last, so a
    process killed while saving leaves a newer one without it, which every resume would fail on."""
    found = sorted((int(m.group(1)), p) for p in folder.glob("checkpoint-*")
                   if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and p.is_dir())
    for _, path in reversed(found):
        if (path / "trainer_state.json").is_file():
            return str(path)
        print(f"skipping {path}: incomplete (a process stopped while saving it)", file=sys.stderr)
    return None


def finetune(opts: FinetuneOptions) -> FinetuneResult:
    """Train the LoRA student of ``opts.role`` (see the module docstring)."""
    t0 = time.perf_counter()
    try:
        import peft  # noqa: F401
        import trl  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"fine-tuning needs peft, TRL and datasets: pip install 'reallod[tune]' ({e})") from e
    for name, value, least in (("--epochs", opts.epochs, 0), ("--learning-rate", opts.learning_rate, 0),
                               ("--batch-size", opts.batch_size, 1), ("--grad-accum", opts.grad_accum, 1),
                               ("--lora-r", opts.lora_r, 1), ("--max-length", opts.max_length, 8),
                               ("--save-steps", opts.save_steps, 1)):
        if not math.isfinite(value) or value < least or (least == 0 and value == 0):  # nan passes every <
            raise ConfigError(f"{name} must be a finite number {'above 0' if least == 0 else f'at least {least}'}, "
                              f"got {value}")
    if opts.max_steps is not None and opts.max_steps < 1:
        raise ConfigError(f"--max-steps must be at least 1, got {opts.max_steps}")
    data = Path(opts.data)
    manifest = read_manifest(data)
    files = role_files(data, opts.role)
    digest = data_hash(files)
    opts.base, opts.gguf_file = resolve_base(opts.base, opts.gguf_file)
    out = Path(opts.out)
    main = launch_place().rank == 0
    created = not out.exists()
    lock = _lock_out(opts) if main else None
    try:
        with warnings.catch_warnings():
            # at each save peft looks for the base's config.json, to tell a resized vocabulary (never resized
            # here); a GGUF's folder has none, and every checkpoint warned of it
            warnings.filterwarnings("ignore", message="Could not find a config file in .* the vocabulary was not "
                                    "modified", category=UserWarning)
            return _finetune(opts, manifest, files, digest, main, t0)
    finally:
        if lock is not None:
            lock.release()
            if created:  # a run that could not start leaves no empty folder behind
                with contextlib.suppress(OSError):
                    out.rmdir()


def _lock_out(opts: FinetuneOptions) -> JournalLock:
    """``OUT`` locked for this run (its main process), before anything in it is read or deleted: a second
    run on it would resume from the same checkpoints, save into them while the first deletes them, and
    write one adapter over the other; it is refused at once, naming the run holding ``OUT``. The kernel's
    lock goes with the process (``kill -9`` included)."""
    out = Path(opts.out)
    check_out(out, Path(opts.data), opts.base)  # an OUT that is a file or inside the data: refused, not created
    try:
        out.mkdir(parents=True, exist_ok=True)
        return lock_journal(out / RUN_FILE)
    except JournalBusy:
        raise JournalBusy(f"{out}: another fine-tune{lock_holder(out / RUN_FILE)} is running on this --out; "
                          "wait for it to finish, or choose another --out (two runs would save into one "
                          "folder of checkpoints and write one adapter over the other)") from None
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot write there ({e.strerror or e})") from e


def _finetune(opts: FinetuneOptions, manifest: dict[str, Any], files: dict[str, Path], digest: str, main: bool,
              t0: float) -> FinetuneResult:
    """:func:`finetune` once ``OUT`` is this run's (its main process holds the lock)."""
    import peft

    out, data = Path(opts.out), Path(opts.data)
    try:
        resume, replace = prepare_out(opts, manifest, digest)
    except _Finished as done:
        return _already_finished(out, done.record, main)
    vision = opts.role == "vlm"
    model, processor = load_base(opts.base, opts.gguf_file, vision=vision, dtype=opts.dtype,
                                 trust_remote_code=opts.trust_remote_code)
    tokenizer = getattr(processor, "tokenizer", processor)
    if tokenizer.pad_token is None:  # TRL pads batches with it; the loss never sees it
        tokenizer.pad_token = tokenizer.eos_token
    from datasets import Dataset

    too_long = 0
    splits: dict[str, Any] = {}
    for split, path in files.items():
        if vision:
            rows = _vision_rows(path, data)
        else:
            rows, skipped = _text_rows(path, tokenizer, opts.role, opts.max_length)
            too_long += skipped
        if rows:
            splits[split] = Dataset.from_list(rows)
    if "train" not in splits:
        if not too_long:  # an empty file (only blank lines): no example was too long
            raise DataError(f"no {opts.role} training examples in the file (rebuild the dataset with "
                            "`reallod agent sft-data`)", path=str(files["train"]))
        raise DataError(f"every {opts.role} training example is longer than --max-length {opts.max_length} "
                        "tokens", path=str(files["train"]))
    record = {"status": "training", "settings": opts.settings(), "length": _training_length(opts),
              "data_manifest": _manifest_view(manifest), "data_hash": digest,
              "examples": {s: len(d) for s, d in splits.items()}, "skipped_too_long": too_long}
    if main:  # one process empties OUT and writes the record (the others would delete what it wrote)
        if replace:  # the new run can start: only now does the old fine-tune go
            _empty(out)
        out.mkdir(parents=True, exist_ok=True)
        _write_run(out, record)
    trainer = _trainer(opts, model, processor, splits, out, peft)
    if "val" in splits:
        _validate_the_epoch_a_stop_cut_off(trainer)
    stop = _StopOnSignal()
    trainer.add_callback(stop.callback())
    trainer.add_callback(_stop_if_trained())
    trainer.add_callback(_log_last_step())
    try:
        with stop:
            trainer.train(resume_from_checkpoint=resume)
    except _Trained:  # resumed from the last step's checkpoint: only the saving is left to do
        trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)
    except KeyboardInterrupt as e:
        raise Interrupted(f"fine-tuning stopped; the checkpoints in {out / CHECKPOINTS} are kept: rerun the same "
                          "command to resume") from e
    except Exception as e:
        if (what := out_of_memory(e)) is None:
            raise
        raise _out_of_memory(what, opts, trainer.state.global_step, out) from e
    if stop.requested:
        raise Interrupted(f"fine-tuning stopped at step {trainer.state.global_step} and saved a checkpoint in "
                          f"{out / CHECKPOINTS}: rerun the same command to resume")
    val_losses = []
    if "val" in splits:
        if not any("eval_loss" in h for h in trainer.state.log_history if h.get("epoch") == trainer.state.epoch):
            trainer.evaluate()
        val_losses = [{"epoch": round(float(h["epoch"]), 4), "loss": float(h["eval_loss"])}
                      for h in trainer.state.log_history if "eval_loss" in h]
    train_losses = [{"step": int(h["step"]), "loss": float(h["loss"])} for h in trainer.state.log_history
                    if "loss" in h and "step" in h]
    result = FinetuneResult(out, trainer.state.global_step, len(splits["train"]), len(splits.get("val") or []),
                            too_long, train_losses[-1]["loss"] if train_losses else None, val_losses, resume)
    for h in trainer.state.log_history:
        if "num_tokens" in h and "eval_loss" not in h:
            result.tokens = int(float(h["num_tokens"]))
        if "train_runtime" in h:
            result.train_seconds = float(h["train_runtime"])
    trainer.save_model(str(out))  # every process calls it (sharded setups gather); the main one writes
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(out))
        merged = out / MERGED
        shutil.rmtree(merged, ignore_errors=True)  # a run stopped while merging left part of one
        if opts.merge:
            trainer.model.merge_and_unload().save_pretrained(str(merged))
            processor.save_pretrained(str(merged))
            result.merged = merged
        result.seconds = time.perf_counter() - t0
        _write_run(out, {**record, "status": "finished", "steps": result.steps, "train_losses": train_losses,
                         "val_losses": val_losses, "resumed_from": resume,
                         "merged": str(result.merged) if result.merged else None,
                         "seconds": round(result.seconds, 1), "tokens": result.tokens,
                         "train_seconds": round(result.train_seconds, 2)})
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)  # only now: until finished, a rerun resumes from them
    return result


def _empty(out: Path) -> None:
    """Delete what ``OUT`` holds (a fine-tune's own files: :func:`prepare_out` checked), all but the lock of
    this run: deleted, it would let a second run lock a new one."""
    for entry in _entries(out):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _already_finished(out: Path, record: dict[str, Any], main: bool) -> FinetuneResult:
    """The result of the finished fine-tune in ``OUT``, as its record says: a rerun of the same command
    (a scheduler's, after a kill that landed as the process exited) has nothing to do. The checkpoints
    such a kill may have left half deleted go now."""
    if main:
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
        print(f"{out} holds this fine-tune finished already (the same settings and data; see {out / RUN_FILE}): "
              "nothing to train", file=sys.stderr)
    try:
        examples = record.get("examples") or {}
        train_losses = record.get("train_losses") or []
        return FinetuneResult(
            out, int(record.get("steps") or 0), int(examples.get("train") or 0), int(examples.get("val") or 0),
            int(record.get("skipped_too_long") or 0), float(train_losses[-1]["loss"]) if train_losses else None,
            list(record.get("val_losses") or []), None, Path(record["merged"]) if record.get("merged") else None,
            float(record.get("seconds") or 0.0), int(record.get("tokens") or 0),
            float(record.get("train_seconds") or 0.0), finished_before=True)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as e:
        raise DataError(f"not a fine-tune's record ({type(e).__name__}: {e}); pass --overwrite to train it again",
                        path=str(out / RUN_FILE)) from None


def _validate_the_epoch_a_stop_cut_off(trainer: Any) -> None:
    """Make a resume from a checkpoint saved at an epoch's last step run that epoch's validation first.
    transformers saves a step's checkpoint before the epoch-end evaluation, so such a checkpoint's log and
    random state are from before it, and a resume starts the next epoch: the epoch's validation loss was
    lost (killed after the save), or never run (Ctrl-C skips it), and the evaluation's draws from the
    random generators (its data loader's seed) were not made, so the next epoch's dropout differed from an
    uninterrupted run's. The evaluation runs where the uninterrupted run's did: right after the
    checkpoint's random state is restored (transformers does that at the start of the resumed epoch,
    before it draws anything), so the resumed run is the uninterrupted one, bit for bit."""
    load_rng_state = getattr(trainer, "_load_rng_state", None)
    if load_rng_state is None:  # another transformers: resume as it does
        return

    def load_then_validate(checkpoint: str | None) -> None:
        load_rng_state(checkpoint)
        state = trainer.state
        epoch = float(state.epoch or 0)
        if checkpoint is not None and epoch > 0 and epoch.is_integer() and not any(
                "eval_loss" in h and h.get("epoch") == state.epoch for h in state.log_history):
            trainer.evaluate()

    trainer._load_rng_state = load_then_validate


def _trainer(opts: FinetuneOptions, model: Any, processor: Any, splits: dict[str, Any], out: Path, peft: Any) -> Any:
    import torch
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    bf16 = cuda and model.dtype == torch.bfloat16
    layers = None
    if opts.lora_layers is not None:
        n = int(getattr(model.config.get_text_config(), "num_hidden_layers", 0) or 0)
        if not 1 <= opts.lora_layers <= max(n, 1):
            raise ConfigError(f"--lora-layers {opts.lora_layers}: the base model has {n} layers")
        layers = list(range(n - opts.lora_layers, n))
    targets: str | list[str] = opts.target_modules
    if layers is not None and targets == "all-linear":  # peft takes a layer subset only with named modules
        targets = _layer_linears(model)
    lora = peft.LoraConfig(r=opts.lora_r, lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
                           target_modules=targets, layers_to_transform=layers, task_type="CAUSAL_LM")
    checkpointing = cuda if opts.gradient_checkpointing is None else opts.gradient_checkpointing
    args = SFTConfig(
        **{_checkpointing_field(SFTConfig): checkpointing},
        output_dir=str(out / CHECKPOINTS), num_train_epochs=opts.epochs,
        max_steps=opts.max_steps if opts.max_steps is not None else -1,
        per_device_train_batch_size=opts.batch_size, per_device_eval_batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.grad_accum, learning_rate=opts.learning_rate,
        lr_scheduler_type="linear", warmup_steps=0, logging_steps=opts.logging_steps,
        eval_strategy="epoch" if "val" in splits else "no", save_strategy="steps", save_steps=opts.save_steps,
        save_total_limit=2, seed=opts.seed, data_seed=opts.seed, bf16=bf16, use_cpu=not cuda,
        report_to=[], completion_only_loss=True,
        max_length=None if opts.role == "vlm" else opts.max_length, disable_tqdm=not opts.progress,
        dataloader_num_workers=0, remove_unused_columns=opt_remove_columns(opts.role), logging_first_step=True,
    )
    return SFTTrainer(model=model, args=args, train_dataset=splits["train"], eval_dataset=splits.get("val"),
                      processing_class=processor, peft_config=lora)


def _checkpointing_field(config: type) -> str:
    """transformers 5.x renamed ``gradient_checkpointing`` ``activation_checkpointing`` (the old name warns at
    every run and goes in v6); earlier 5.x releases know only the old one."""
    names = {f.name for f in fields(config)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def _layer_linears(model: Any) -> list[str]:
    """The names of the linear modules inside the transformer layers (``q_proj``, ``down_proj``, ...)."""
    import torch

    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and ".layers." in name}
    if not names:
        raise ConfigError("--lora-layers: no linear modules found inside the model's layers")
    return sorted(names)


def opt_remove_columns(role: str) -> bool:
    """TRL's vision collator needs the raw ``prompt``/``completion``/``images`` columns kept."""
    return role != "vlm"


class _Trained(Exception):
    """A resumed run's checkpoint already holds every step."""


def _stop_if_trained() -> Any:
    """End a run resumed from its final checkpoint (one stopped while saving the adapter or merging)
    before it begins: transformers would train one step past the end."""
    from transformers import TrainerCallback

    class StopIfTrained(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step >= state.max_steps:
                raise _Trained
            return control

    return StopIfTrained()


def _log_last_step() -> Any:
    """Log the last step too (transformers logs every ``logging_steps``): the result's last training loss and
    token count are the run's end, not the last multiple of ``logging_steps`` (step 1's, in a 6-step run)."""
    from transformers import TrainerCallback

    class LogLastStep(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.global_step >= state.max_steps:
                control.should_log = True
            return control

    return LogLastStep()


class _StopOnSignal:
    """Ctrl-C (SIGINT) or SIGTERM during training: finish the step, save a checkpoint, stop. A second one
    interrupts at once (the last saved checkpoint is kept)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopOnSignal:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def callback(self) -> Any:
        from transformers import TrainerCallback

        stop = self

        class StopOnSignal(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
                if stop.requested:
                    control.should_save = True
                    control.should_training_stop = True
                return control

            def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
                if stop.requested:  # no validation pass on the way out: it may outlast a scheduler's grace
                    control.should_evaluate = False
                return control

        return StopOnSignal()
