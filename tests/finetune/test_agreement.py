"""``reallod agent agreement`` against its dataset: the config's template must be the one the examples were
rendered with, and a damaged split is named by file and line; the shipped student config says what it runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from reallod.errors import ConfigError
from reallod.finetune.agreement import measure_agreement
from reallod.finetune.sft_data import build_sft_data
from tests.cli_helpers import run_cli

SHORT_REFLECTOR = '[user]\nCategory: $category\nExpression: "$expression"\nIs the expression correct, uncertain or wrong?\n'


def config(folder: Path, model: Path, name: str, prompt: str | None = None, *, others: bool = True) -> Path:
    reflector = {"backend": "transformers", "model": str(model), "max_tokens": 8, "temperature": 0.0,
                 **({"prompt": prompt} if prompt else {})}
    other = {"backend": "transformers", "model": str(model), "max_tokens": 8}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"roles": {"reflector": reflector, **({"planner": other, "rewriter": other,
                                                                          "vlm": None} if others else {})}}))
    return path


def test_a_config_of_the_measured_role_alone_is_enough(teacher_run, teacher_data, tiny_lm, tmp_path, capsys) -> None:
    """A student config naming only its reflector was refused ('the planner role is required') by
    sft-data --config and agreement, which never use the other roles."""
    (tmp_path / "short.txt").write_text(SHORT_REFLECTOR)
    student = config(tmp_path, tiny_lm, "student", prompt="short.txt", others=False)
    data = tmp_path / "short-sft"
    build_sft_data([teacher_run / "teacher.trace.jsonl"], data, config=student, val_fraction=0.25)
    code, out, err = run_cli(["agent", "agreement", data, "--role", "reflector", "--config", student,
                              "--limit", "1"], capsys)
    assert code == 0 and "of 1 decision(s) equal the teacher's" in out, err
    code, _, err = run_cli(["agent", "agreement", data, "--role", "planner", "--config", student], capsys)
    assert code == 2 and f"{student}: roles.planner: the planner role is required" in err, err


def test_a_config_with_another_template_than_the_data_is_refused(teacher_run, teacher_data, tiny_lm, tmp_path,
                                                                  capsys) -> None:
    """A config whose reflector has its own `prompt:` was measured on the packaged template's prompts stored
    in the data, as if they were its own."""
    (tmp_path / "short.txt").write_text(SHORT_REFLECTOR)
    student = config(tmp_path, tmp_path / "never-loaded", "student", prompt="short.txt")
    with pytest.raises(ConfigError) as e:  # before any model loads (there is none at that path)
        measure_agreement(teacher_data, "reflector", student)
    msg = str(e.value)
    assert f"{student}: roles.reflector renders its prompts with its template {tmp_path / 'short.txt'}" in msg
    assert f"examples of {teacher_data} were rendered with the packaged reflector.txt" in msg
    trace = teacher_run / "teacher.trace.jsonl"
    assert f"reallod agent sft-data {trace} --config {student} --val-fraction 0.25 --seed 0 --out NEW_DIR" in msg
    # the same config on data rendered with its template (the command the message gives) is measured
    data = tmp_path / "short-sft"
    build_sft_data([trace], data, config=student, val_fraction=0.25)
    student = config(tmp_path, tiny_lm, "student", prompt="short.txt")
    code, out, err = run_cli(["agent", "agreement", data, "--role", "reflector", "--config", student,
                              "--limit", "1"], capsys)
    assert code == 0 and "of 1 decision(s) equal the teacher's" in out, err
    # and the packaged template on that data is refused, naming the config the data was built with
    base = config(tmp_path, tmp_path / "never-loaded", "base")
    code, _, err = run_cli(["agent", "agreement", data, "--role", "reflector", "--config", base], capsys)
    assert code == 2 and "renders its prompts with the packaged reflector.txt" in err, err
    assert "rendered with the templates of the config" in err and "Traceback" not in err
    # other roles of the same config keep the packaged templates, as their data does
    code, _, err = run_cli(["agent", "agreement", data, "--role", "planner", "--config", student, "--limit", "1"],
                           capsys)
    assert code == 0, err


def test_a_split_with_a_byte_that_is_not_utf8_is_named_before_loading(teacher_data, tmp_path, capsys) -> None:
    """agreement read the whole split at once: 'unexpected UnicodeDecodeError ... position 72888', exit 1."""
    data = tmp_path / "sft"
    shutil.copytree(teacher_data, data)
    val = data / "reflector" / "val.jsonl"
    lines = val.read_bytes().split(b"\n")
    lines[1] = lines[1][:20] + b"\xe9" + lines[1][21:]
    val.write_bytes(b"\n".join(lines))
    cfg = config(tmp_path, tmp_path / "never-loaded", "cfg")
    code, _, err = run_cli(["agent", "agreement", data, "--role", "reflector", "--config", cfg], capsys)
    assert code == 2 and f"{val}:2: not UTF-8 text (byte 0xe9 at column 21)" in " ".join(err.split()), err


def test_the_student_config_says_what_its_other_roles_run() -> None:
    """configs/agent/vllm-student.yaml said its other roles kept the teacher setup of vllm.yaml; they are its
    0.5B base (rewriter at temperature 0.0) and it has no VLM."""
    from reallod.agent.agent_config import load_agent_config

    path = Path(__file__).resolve().parents[2] / "configs" / "agent" / "vllm-student.yaml"
    comment = " ".join(line.lstrip("# ") for line in path.read_text().splitlines() if line.startswith("#"))
    cfg = load_agent_config(path)
    assert "keep the teacher setup" not in comment
    assert cfg.roles["planner"].model == cfg.roles["rewriter"].model and cfg.roles["planner"].model in comment
    assert cfg.roles["vlm"] is None and "no VLM (vlm: null)" in comment and "unavailable" in comment
    assert cfg.roles["rewriter"].temperature == 0.0 and "temperature 0.0" in comment
    assert "not the student reflector alone" in comment


def test_examples_are_asked_as_many_at_once_as_the_config_says_and_ctrl_c_says_how_far(
        teacher_data, tmp_path, capsys, monkeypatch) -> None:
    """One example at a time, with no progress, and a bare "interrupted": against vLLM with thousands of
    held-out examples it took hours without a word."""
    import asyncio

    from reallod.finetune import agreement
    from tests.agent.io_helpers import fake_server_config
    from tests.llm.aio_server import AioServer, ok

    in_flight, most = 0, 0

    async def respond(body, request):
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return ok('{"missing": "", "feedback": "", "verdict": "correct"}')

    with AioServer(respond) as server:
        cfg = fake_server_config(tmp_path / "fake.yaml", server.url, vlm=False, concurrency=4)
        rep = measure_agreement(teacher_data, "reflector", cfg, split="train")
    assert rep.examples == len(server.bodies) > 4 and rep.unusable == 0
    assert 1 < most <= 4

    def pressed(coroutine):
        coroutine.close()
        raise KeyboardInterrupt

    monkeypatch.setattr(agreement.asyncio, "run", pressed)
    code, _, err = run_cli(["agent", "agreement", teacher_data, "--role", "reflector", "--config", cfg,
                            "--split", "train"], capsys)
    assert code == 130 and f"interrupted: 0 of {rep.examples} example(s) asked" in err and "starts over" in err, err
