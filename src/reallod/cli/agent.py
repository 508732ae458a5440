"""``reallod agent ...``: fine-tune the agent's own models on its traces (docs/agent-finetune.md).

``sft-data`` turns traces into one chat dataset per role, ``finetune`` LoRA-tunes a student for one
role, ``agreement`` measures how often a config's decisions equal the teacher's on held-out images.
The work is :mod:`reallod.finetune`'s; these commands parse and print.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
import typer.core

from reallod.cli.common import (
    AgentConfig,
    BaseUrl,
    LlmBaseUrl,
    ReadProgress,
    VlmBaseUrl,
    config_file_value,
    console,
    data_progress,
    ordered_group,
    quiet_transformers,
)

app = typer.Typer(cls=ordered_group("sft-data", "finetune", "agreement"), no_args_is_help=True,
                  add_completion=False,
                  help="Fine-tune the agent's own models on its traces: sft-data, finetune, agreement.")


def register(root: typer.Typer) -> None:
    """The ``agent`` group (after ``agent-eval``)."""
    root.add_typer(app, name="agent")


def sft_from_argv(args: list[str]) -> list[str]:
    """``--from gold FILE`` (two words, as users write it) → ``--from gold=FILE`` (one option value)."""
    fixed: list[str] = []
    i = 0
    while i < len(args):
        if args[i] == "--from" and i + 2 < len(args) and args[i + 1] == "gold" and not args[i + 2].startswith("-"):
            fixed += ["--from", f"gold={args[i + 2]}"]
            i += 3
            continue
        fixed.append(args[i])
        i += 1
    return fixed


class _SftDataCommand(typer.core.TyperCommand):
    """Reads ``--from gold LABELLED`` as one option with two words."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, sft_from_argv(args))


@app.command("sft-data", cls=_SftDataCommand)
def sft_data_cmd(
    traces: Annotated[list[Path], typer.Argument(
        help="Trace files of agent runs (OUT.trace.jsonl or .jsonl.gz of realign or agent-eval).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Dataset folder: ROLE/train.jsonl, ROLE/val.jsonl, images/, "
                                                    "manifest.json.")],
    select: Annotated[str, typer.Option(
        "--from", metavar="teacher | gold LABELLED",
        help="teacher: every finished task; gold LABELLED: only tasks whose final verdict agrees with the gold "
             "labels of LABELLED (and rewrites that match an acceptable expression).")] = "teacher",
    images: Annotated[Path | None, typer.Option(
        "--images", metavar="ROOT", help="Image root for the VLM views (default: the one each trace recorded).")] = None,
    config: Annotated[str | None, typer.Option(
        "--config", help="Render the prompts with this agent config's templates (the student's; default: the "
                         "packaged prompts).", callback=config_file_value)] = None,
    val_fraction: Annotated[float, typer.Option(
        "--val-fraction", min=0.0, max=0.95,
        help="Share of the images held out for validation: an image is held out when a seeded hash of its file "
             "name falls below it, so a dataset rebuilt with more images keeps each image's side.")] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the image split.")] = 0,
    min_f1: Annotated[float, typer.Option(
        "--match-f1", min=0.0, max=1.0, help="With --from gold: a rewrite matches at this content-word F1.")] = 0.6,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset at --out.")] = False,
    progress: ReadProgress = None,
) -> None:
    """Turn agent traces into chat datasets, one per role, split by image; print the counts.

    Example: reallod agent sft-data run.trace.jsonl --from gold examples/labelled.jsonl --out sft
    """
    from reallod.finetune.sft_data import build_sft_data

    source, labelled = _parse_from(select)
    with data_progress(progress, "sft-data", traces):
        rep = build_sft_data(traces, out, source=source, labelled=labelled, images=images, config=config,
                             val_fraction=val_fraction, seed=seed, min_f1=min_f1, overwrite=overwrite)
    from rich.table import Table

    table = Table(title=f"{rep.total()} example(s) in {out}")
    for col in ("role", "train", "val", "labels (train | val)"):
        table.add_column(col, justify="right" if col in ("train", "val") else "left")
    for role, counts in rep.examples.items():
        labels = rep.labels.get(role, {})
        text = " | ".join(", ".join(f"{k} {v}" for k, v in sorted(labels.get(s, {}).items())) or "-"
                          for s in ("train", "val"))
        table.add_row(role, str(counts.get("train", 0)), str(counts.get("val", 0)), text)
    c = console()
    c.print(table)
    for split in ("train", "val"):
        verdicts = rep.task_verdicts.get(split) or {}
        c.print(f"{split}: {rep.images.get(split, 0)} image(s), tasks by final verdict: "
                + (", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())) or "none"))
    c.print(f"read {rep.tasks_read} task(s), used {rep.tasks_used}; {rep.duplicates} duplicate example(s) dropped")
    for reason, n in rep.skipped.most_common():
        c.print(f"left out: {n} {reason}")
    missing = [r for r in ("reflector", "planner", "rewriter", "vlm") if r not in rep.examples]
    if missing:
        c.print(f"no examples for: {', '.join(missing)}")
    if rep.prompts_changed:
        c.print(f"{rep.prompts_changed} prompt(s) differ from those the run sent (other templates): the data "
                "uses the templates the student will be asked with")


def _parse_from(value: str) -> tuple[str, Path | None]:
    if value == "teacher":
        return "teacher", None
    if value.startswith("gold=") and value[5:]:
        return "gold", Path(value[5:])
    if value == "gold":
        raise typer.BadParameter("--from gold needs the labelled file: --from gold LABELLED", param_hint="--from")
    raise typer.BadParameter(f"expected teacher or gold LABELLED, got {value!r}", param_hint="--from")


@app.command("finetune")
def finetune_cmd(
    data: Annotated[Path, typer.Argument(help="An sft-data folder.", show_default=False)],
    role: Annotated[str, typer.Option("--role", help="reflector, planner, rewriter or vlm.")],
    base: Annotated[str, typer.Option(
        "--base", help="Base model: a hub id or folder (a causal LM; a vision-language model for vlm) or a "
                       ".gguf file.")],
    out: Annotated[Path, typer.Option("--out", help="Adapter folder (PEFT); checkpoints in OUT/checkpoints.")],
    gguf_file: Annotated[str | None, typer.Option("--gguf-file", help="A GGUF file inside the --base folder.")] = None,
    epochs: Annotated[float, typer.Option("--epochs", help="Passes over the training examples.")] = 3.0,
    max_steps: Annotated[int | None, typer.Option(
        "--max-steps", min=1, help="Stop after this many optimizer steps (wins over --epochs).")] = None,
    learning_rate: Annotated[float, typer.Option("--learning-rate", help="Peak learning rate (linear decay).")] = 2e-4,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Examples per step per device.")] = 4,
    grad_accum: Annotated[int, typer.Option("--grad-accum", min=1, help="Gradient accumulation steps.")] = 1,
    lora_r: Annotated[int, typer.Option("--lora-r", min=1, help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, typer.Option("--lora-alpha", min=1, help="LoRA alpha.")] = 32,
    lora_layers: Annotated[int | None, typer.Option(
        "--lora-layers", min=1, help="Adapt only the last N layers (cheaper backward; default: all).")] = None,
    max_length: Annotated[int, typer.Option(
        "--max-length", min=8, help="Longest example in tokens; longer ones are left out and counted.")] = 2048,
    save_steps: Annotated[int, typer.Option("--save-steps", min=1, help="Checkpoint every N steps.")] = 50,
    merge: Annotated[bool, typer.Option("--merge", help="Also write OUT/merged: the base with the adapter merged.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace the fine-tune at --out (refused when it holds anything a fine-tune does not "
                            "write, or the --base).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the LoRA init and the data order.")] = 0,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress", help="Progress bar (default: when stderr is a terminal; the loss lines are "
        "printed either way).")] = None,
) -> None:
    """LoRA-tune a student for one role (peft + TRL's SFT trainer; loss on the reply only); resumable.

    Rerunning the same command resumes from the last checkpoint (Ctrl-C saves one); a finished
    fine-tune is never overwritten without --overwrite. Multi-GPU: accelerate launch -m reallod agent
    finetune ... Example: reallod agent finetune sft --role reflector --base Qwen/Qwen2.5-0.5B-Instruct --out student
    """
    from reallod.finetune.trainer import FinetuneOptions, finetune

    quiet_transformers()
    if progress is None:  # a bar in a redirected log is thousands of carriage-return lines
        progress = sys.stderr.isatty()
    if progress:
        from transformers.utils import logging as hf_logging

        hf_logging.enable_progress_bar()
    res = finetune(FinetuneOptions(
        data=data, role=role, base=base, out=out, gguf_file=gguf_file, epochs=epochs, max_steps=max_steps,
        learning_rate=learning_rate, batch_size=batch_size, grad_accum=grad_accum, lora_r=lora_r,
        lora_alpha=lora_alpha, lora_layers=lora_layers, max_length=max_length, save_steps=save_steps, merge=merge,
        overwrite=overwrite, seed=seed, progress=progress))
    c = console()
    c.print(f"{res.steps} step(s) on {res.train_examples} example(s) ({res.val_examples} validation)"
            + (f", resumed from {res.resumed_from}" if res.resumed_from else "")
            + (f"; {res.skipped_too_long} longer than --max-length left out" if res.skipped_too_long else ""))
    if res.train_loss is not None:
        c.print(f"last training loss {res.train_loss:.4f}")
    for v in res.val_losses:
        c.print(f"validation loss at epoch {v['epoch']:g}: {v['loss']:.4f}")
    c.print(f"adapter: {res.out}" + (f"; merged weights: {res.merged}" if res.merged else "")
            + f" ({res.seconds:.0f} s). Use it in a config: adapter: {res.out}")


@app.command("agreement")
def agreement_cmd(
    data: Annotated[Path, typer.Argument(help="An sft-data folder.", show_default=False)],
    role: Annotated[str, typer.Option("--role", help="reflector, planner, rewriter or vlm.")],
    config: AgentConfig,
    split: Annotated[str, typer.Option("--split", help="train or val (images the student never saw).")] = "val",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Ask only the first N examples.")] = None,
    base_url: BaseUrl = None,
    llm_base_url: LlmBaseUrl = None,
    vlm_base_url: VlmBaseUrl = None,
) -> None:
    """How often the config's decisions for ROLE equal the teacher's on a split of the data.

    Example: reallod agent agreement sft --role reflector --config student.yaml
    """
    from reallod.finetune.agreement import measure_agreement

    quiet_transformers()
    rep = measure_agreement(data, role, config, split=split, limit=limit, base_url=base_url,
                            llm_base_url=llm_base_url, vlm_base_url=vlm_base_url, progress=sys.stderr.isatty())
    c = console()
    rate = "n/a" if rep.rate is None else f"{100 * rep.rate:.1f}%"
    c.print(f"{role} on {split}: {rep.equal} of {rep.examples} decision(s) equal the teacher's ({rate})"
            + (f"; {rep.unusable} unusable" if rep.unusable else ""))
    for (teacher, model), n in sorted(rep.confusion.items()):
        c.print(f"  teacher {teacher} → model {model}: {n}")
