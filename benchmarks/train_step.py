"""Training throughput: images per second and peak memory of the real training loop.

Cases (each runs in its own process, so peak memory is the case's own):

- ``tiny-cpu``: ``configs/train/tiny-cpu.yaml`` as shipped (tiny Swin, MiniLM text encoder frozen or
  not as the config says, 128-pixel shapes, batch 8);
- ``swin-t-cpu``: the MM-Grounding-DINO-T layout (Swin-T, BERT-base, 6+6 layers, 900 queries, 172M
  parameters, random weights) at a reduced resolution (short side 320) on the CPU, batch 2;
- ``swin-t-gpu``: the same layout at the published input sizes (short side 480-800, long side up to
  1333, flip + crop) with bf16 mixed precision, batch 4, on CUDA (skipped without a GPU).

Every case runs ``reallod.train.loop.train`` on coloured-shapes images (generated at 640×480 for the
Swin-T cases), with a log line per step; the first steps are a warm-up and are left out. The prompts
of this data are shorter than Real-Data's (about 10 phrases, not 50 negatives), so the text side of
the Swin-T cases is lighter than in a real run. Nothing is downloaded. Progress (the case, step i/N)
goes to stderr as it runs; the table goes to stdout at the end. ``--json FILE`` appends one JSON line
per case (``"stage": "train"``) as soon as the case has run, so a run stopped later keeps it.

    .venv/bin/python benchmarks/train_step.py                 # all cases this machine can run
    .venv/bin/python benchmarks/train_step.py --case tiny-cpu --steps 20
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ("tiny-cpu", "swin-t-cpu", "swin-t-gpu")


def _swin_t_folder(out: Path, max_text_len: int) -> Path:
    """A random-initialised detector folder with the published Swin-T layout (nothing downloaded)."""
    import torch
    from transformers import MMGroundingDinoForObjectDetection
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    from reallod.model.convert_checkpoint import variant_config
    from reallod.model.hf_folder import save_tokenizer
    from reallod.model.tiny import load_vocab_tokenizer

    torch.manual_seed(0)
    model = MMGroundingDinoForObjectDetection(variant_config("tiny", max_text_len=max_text_len))
    model.save_pretrained(str(out))
    save_tokenizer(load_vocab_tokenizer(), out)
    GroundingDinoImageProcessorPil().save_pretrained(str(out))
    return out


def _config(case: str, work: Path, steps: int, warmup: int) -> tuple[object, int]:
    from reallod.train.config import load_config

    common = [f"schedule.max_steps={warmup + steps}", "log.every_steps=1", "log.tensorboard=false",
              "eval.every_epochs=0", "checkpoint.every_epochs=1000", "schedule.epochs=1000"]
    if case == "tiny-cpu":
        return load_config(ROOT / "configs" / "train" / "tiny-cpu.yaml", common), 8
    size = "[640, 480]"
    data = [f"data.synthetic={{dir: '{work}/shapes', num_train: 64, num_val: 0, size: {size}}}",
            "data.num_workers=2", "data.max_negatives=50"]
    model = _swin_t_folder(work / "swin-t", 512)
    if case == "swin-t-cpu":
        opts = [*common, *data, "data.num_workers=0", "train.batch_size=2", "train.cpu=true", "augment.scales=[320]",
                "augment.max_size=533", "augment.crop_prob=0", "augment.test_scale=[320, 533]"]
        batch = 2
    else:
        opts = [*common, *data, "train.batch_size=4", "train.mixed_precision=bf16"]
        batch = 4
    cfg = load_config(ROOT / "configs" / "train" / "real-model-t.yaml", opts)
    cfg.model.init = str(model)
    cfg.model.max_text_len = 512
    cfg.data.train = []
    return cfg, batch


def progress(message: str) -> None:
    print(f"train_step: {message}", file=sys.stderr, flush=True)


class StepEcho:
    """The training log's lines as progress: ``CASE: step i/N`` (warm-up steps marked), nothing else."""

    def __init__(self, case: str, total: int, warmup: int) -> None:
        self.case, self.total, self.warmup = case, total, warmup

    def __call__(self, line: str) -> None:
        words = line.split()
        if len(words) >= 2 and words[0] == "step" and words[1].isdigit():
            i = int(words[1])
            loss = next((w for w in words[2:] if w.startswith("loss=")), "")
            progress(f"{self.case}: step {i}/{self.total}{' (warm-up)' if i <= self.warmup else ''} {loss}".rstrip())


def run_case(case: str, steps: int, warmup: int) -> dict:
    """Train ``warmup + steps`` steps; throughput over the last ``steps`` (data loading included)."""
    from reallod.cli.common import quiet_transformers
    from reallod.train.loop import train

    quiet_transformers()
    with tempfile.TemporaryDirectory(prefix="reallod-bench-") as tmp:
        work = Path(tmp)
        progress(f"{case}: building the model and the data")
        cfg, batch = _config(case, work, steps, warmup)
        progress(f"{case}: training {warmup} warm-up + {steps} measured steps")
        result = train(cfg, work / "run", echo=StepEcho(case, warmup + steps, warmup))
        rows = [r for r in result.history if r["step"] > warmup]
        seconds = sum(batch / r["images_per_s"] for r in rows)
        return {"case": case, "batch": batch, "steps": len(rows), "images_per_s": len(rows) * batch / seconds,
                "step_s": seconds / len(rows), "peak_mem_mb": max(r["peak_mem_mb"] for r in result.history),
                "loss_first": result.history[0]["loss"], "loss_last": result.history[-1]["loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=[*CASES, "all"], default="all")
    ap.add_argument("--steps", type=int, default=None, help="measured steps (default: 20 tiny, 3 CPU Swin-T, 20 GPU)")
    ap.add_argument("--warmup", type=int, default=None, help="steps left out first (default: 2; 5 on GPU)")
    ap.add_argument("--json", type=Path, default=None,
                    help="append one JSON line per case here as soon as it has run")
    ap.add_argument("--one", choices=CASES, help=argparse.SUPPRESS)  # internal: run one case in this process
    args = ap.parse_args()
    if args.steps is not None and args.steps < 1:
        ap.error(f"--steps {args.steps}: at least 1 measured step is needed")
    if args.warmup is not None and args.warmup < 0:
        ap.error(f"--warmup {args.warmup}: use 0 or more warm-up steps")
    defaults = {"tiny-cpu": (20, 2), "swin-t-cpu": (3, 2), "swin-t-gpu": (20, 5)}
    if args.one:
        steps, warmup = defaults[args.one]
        print(json.dumps(run_case(args.one, steps if args.steps is None else args.steps,
                                  warmup if args.warmup is None else args.warmup)))
        return
    import torch

    cases = list(CASES) if args.case == "all" else [args.case]
    if not torch.cuda.is_available() and "swin-t-gpu" in cases:
        print("swin-t-gpu: skipped (no CUDA device)", file=sys.stderr)
        cases.remove("swin-t-gpu")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    results = []
    for k, case in enumerate(cases, 1):
        cmd = [sys.executable, __file__, "--one", case]
        if args.steps is not None:
            cmd += ["--steps", str(args.steps)]
        if args.warmup is not None:
            cmd += ["--warmup", str(args.warmup)]
        progress(f"case {k}/{len(cases)}: {case} (its own process)")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
        tail: collections.deque[str] = collections.deque(maxlen=60)
        for line in proc.stderr:  # the child's progress, shown as it comes; the rest kept for a failure
            if line.startswith("train_step: "):
                sys.stderr.write(line)
                sys.stderr.flush()
            else:
                tail.append(line)
        out = proc.stdout.read()
        proc.wait()
        if proc.returncode != 0:
            print(f"{case}: failed\n{''.join(tail)[-3000:]}", file=sys.stderr)
            continue
        results.append(json.loads(out.strip().splitlines()[-1]))
        if args.json:
            with args.json.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"stage": "train", "device_name": device, **results[-1]}) + "\n")
    print(f"device: {device}; torch {torch.__version__}")
    print(f"{'case':<12} {'batch':>5} {'steps':>5} {'images/s':>9} {'s/step':>7} {'peak MiB':>9}")
    for r in results:
        print(f"{r['case']:<12} {r['batch']:>5} {r['steps']:>5} {r['images_per_s']:>9.2f} {r['step_s']:>7.2f} "
              f"{r['peak_mem_mb']:>9.0f}")


if __name__ == "__main__":
    main()
