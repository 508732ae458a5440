"""Fixtures of the fine-tuning tests: one scripted teacher run over the bundled photos, its datasets,
and a tiny random causal LM."""

from __future__ import annotations

from pathlib import Path

import pytest

from reallod.agent.realign import RealignOptions, realign
from tests.agent.scripted import scripted_roles
from tests.finetune.teacher import EXAMPLES, keyword_teacher, teacher_tasks


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory) -> Path:
    """A run of the agent with the scripted keyword teacher (a test double) over 55 tasks on the four
    bundled photos; returns the folder with tasks.json, teacher.jsonl and teacher.trace.jsonl."""
    folder = tmp_path_factory.mktemp("teacher")
    tasks = teacher_tasks(folder / "tasks.json")
    realign(RealignOptions(input=tasks, config="teacher", out=folder / "teacher.jsonl", images=EXAMPLES / "images",
                           no_cache=True, max_cycles=3), roles=scripted_roles(keyword_teacher()))
    return folder


@pytest.fixture(scope="session")
def teacher_data(teacher_run, tmp_path_factory) -> Path:
    """The teacher run's datasets (--from teacher, one image of four held out)."""
    from reallod.finetune.sft_data import build_sft_data

    out = tmp_path_factory.mktemp("sft") / "data"
    build_sft_data([teacher_run / "teacher.trace.jsonl"], out, val_fraction=0.25)
    return out

