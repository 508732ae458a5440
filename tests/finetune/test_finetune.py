"""``reallod agent finetune`` on tiny random models: loss on the reply only, exactly the tokens the
backend uses, the adapter and merged weights, resume after a kill, refusal to overwrite, the ``adapter:``
option of a config and the adapter's identity, and errors for bad input."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import warnings
from pathlib import Path

import pytest
import torch

from reallod.agent.agent_config import build_roles, load_agent_config
from reallod.agent.decisions import SPECS
from reallod.errors import ConfigError, DataError, Interrupted
from reallod.finetune import trainer as trainer_mod
from reallod.finetune.trainer import FinetuneOptions, _text_rows, _vision_rows, finetune, prepare_out
from reallod.llm.backends.transformers_backend import TransformersBackend, prompt_ids, reply_ids
from reallod.llm.endpoints import model_id
from tests.cli_helpers import run_cli
from tests.finetune.tiny_models import save_tiny_vlm

QUICK = {"max_steps": 4, "batch_size": 2, "learning_rate": 5e-2, "save_steps": 2, "logging_steps": 1,
         "progress": False}


def opts(data: Path, base: Path, out: Path, role: str = "reflector", **kw) -> FinetuneOptions:
    return FinetuneOptions(data=data, role=role, base=str(base), out=out, **{**QUICK, **kw})


def test_the_reply_alone_carries_the_loss_and_its_tokens_are_the_decoders(teacher_data, tiny_lm) -> None:
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(tiny_lm)
    rows, too_long = _text_rows(teacher_data / "reflector" / "train.jsonl", tok, "reflector", 4096)
    examples = [json.loads(line) for line in (teacher_data / "reflector" / "train.jsonl").read_text().splitlines()]
    assert too_long == 0 and len(rows) == len(examples)
    for row, ex in zip(rows, examples, strict=True):
        prompt = prompt_ids(tok, ex["messages"][:-1])  # what the backend feeds the model
        reply = reply_ids(tok, ex["messages"][-1]["content"], SPECS["reflector"].schema)
        assert row["input_ids"] == [*prompt, *reply, tok.eos_token_id]
        assert row["completion_mask"] == [0] * len(prompt) + [1] * (len(reply) + 1)
    # the reply's pieces are those the constrained decoder forces and chooses
    first = json.loads(examples[0]["messages"][-1]["content"])
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    assert reply_ids(tok, examples[0]["messages"][-1]["content"], SPECS["reflector"].schema) == [
        *enc('{"missing": "'), *enc(first["missing"]), *enc('"'), *enc(', "feedback": "'), *enc(first["feedback"]),
        *enc('"'), *enc(', "verdict": "'), *enc(first["verdict"] + '"'), *enc("}")]
    _, too_long = _text_rows(teacher_data / "reflector" / "train.jsonl", tok, "reflector", 40)
    assert too_long == len(examples)


def test_finetune_writes_an_adapter_that_the_backend_loads(teacher_data, tiny_lm, tmp_path) -> None:
    out = tmp_path / "student"
    res = finetune(opts(teacher_data, tiny_lm, out, merge=True))
    assert res.steps == 4 and res.train_examples > 20 and res.val_examples > 5 and res.train_loss is not None
    assert res.val_losses and all(v["loss"] > 0 for v in res.val_losses)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "checkpoints").exists()
    record = json.loads((out / "finetune.json").read_text())
    assert record["status"] == "finished" and record["steps"] == 4 and record["val_losses"] == res.val_losses
    assert record["settings"]["role"] == "reflector" and record["examples"]["train"] == res.train_examples

    base = TransformersBackend(str(tiny_lm))
    student = TransformersBackend(str(tiny_lm), adapter=out)
    merged = TransformersBackend(str(out / "merged"))
    assert "+adapter:folder:" in model_id(student) and model_id(student) != model_id(base)
    w_base = base.load().model.model.layers[0].self_attn.q_proj.weight
    w_student = student.load().model.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(w_base, w_student)  # the LoRA update is merged in; the base is untouched
    assert torch.allclose(w_student, merged.load().model.model.layers[0].self_attn.q_proj.weight, atol=1e-6)
    messages = [{"role": "user", "content": "Category: cat\nExpression: \"the cat\""}]
    c = asyncio.run(student.complete(messages, schema=SPECS["reflector"].schema, max_tokens=8))
    SPECS["reflector"].parse(c.text)  # a constrained decision, whatever the tiny model thinks

    # a retrained adapter is another model for the cache and the journals
    before = model_id(TransformersBackend(str(tiny_lm), adapter=out))
    (out / "adapter_model.safetensors").write_bytes((out / "adapter_model.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    assert model_id(TransformersBackend(str(tiny_lm), adapter=out)) != before


def test_a_config_role_takes_an_adapter_relative_to_the_config(teacher_data, tiny_lm, tmp_path) -> None:
    finetune(opts(teacher_data, tiny_lm, tmp_path / "cfgs" / "student", max_steps=1))
    cfg = tmp_path / "cfgs" / "student.yaml"
    cfg.write_text(f"roles:\n  reflector: {{backend: transformers, model: {tiny_lm}, adapter: student}}\n"
                   f"  planner: {{backend: transformers, model: {tiny_lm}}}\n"
                   f"  rewriter: {{backend: transformers, model: {tiny_lm}}}\n")
    roles = build_roles(load_agent_config(cfg))
    assert roles.reflector.backend.adapter == str(tmp_path / "cfgs" / "student")
    assert roles.planner.backend is roles.rewriter.backend and roles.planner.backend is not roles.reflector.backend
    cfg.write_text(f"roles:\n  reflector: {{backend: transformers, model: {tiny_lm}, adapter: nowhere}}\n"
                   f"  planner: {{backend: transformers, model: {tiny_lm}}}\n"
                   f"  rewriter: {{backend: transformers, model: {tiny_lm}}}\n")
    with pytest.raises(ConfigError, match=r"student\.yaml:2: roles\.reflector\.adapter: .*nowhere is not a PEFT adapter "
                                          r"folder \(no adapter_config.json\)"):
        load_agent_config(cfg)


def test_a_finished_finetune_is_never_overwritten_silently(teacher_data, tiny_lm, tmp_path) -> None:
    out = tmp_path / "student"
    finetune(opts(teacher_data, tiny_lm, out, max_steps=1))
    assert finetune(opts(teacher_data, tiny_lm, out, max_steps=1)).finished_before  # the same: done already
    with pytest.raises(ConfigError, match=r"student holds a finished fine-tune with other settings \(max_steps; "
                                          r"see .* pass --overwrite"):
        finetune(opts(teacher_data, tiny_lm, out, max_steps=2))
    (tmp_path / "empty-base").mkdir()
    with pytest.raises(ConfigError):  # a run that cannot start (a wrong base) leaves the old one in place
        finetune(opts(teacher_data, tmp_path / "empty-base", out, max_steps=1, overwrite=True))
    assert (out / "adapter_config.json").is_file()
    res = finetune(opts(teacher_data, tiny_lm, out, max_steps=2, overwrite=True))
    assert res.steps == 2
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a fine-tune folder"):
        finetune(opts(teacher_data, tiny_lm, other, max_steps=1, overwrite=True))
    assert (other / "mine.txt").read_text() == "keep me"


def _interrupt_at(monkeypatch, step: int, how: str | BaseException) -> None:
    """Make the trainer of the next fine-tune stop at ``step``: ``kill`` raises as a killed process would
    stop (no checkpoint of its own), ``ctrl-c`` sends SIGINT to this process, an exception is raised."""
    from transformers import TrainerCallback

    real = trainer_mod._trainer

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                if isinstance(how, BaseException):
                    raise how
                if how == "kill":
                    raise KeyboardInterrupt
                os.kill(os.getpid(), signal.SIGINT)
            return control

    def with_interrupt(*a, **kw):
        t = real(*a, **kw)
        t.add_callback(Interrupt())
        return t

    monkeypatch.setattr(trainer_mod, "_trainer", with_interrupt)


def test_a_killed_finetune_resumes_from_its_last_checkpoint(teacher_data, tiny_lm, tmp_path, monkeypatch) -> None:
    out = tmp_path / "student"
    with monkeypatch.context() as m:
        _interrupt_at(m, 3, "kill")
        with pytest.raises(Interrupted, match=r"checkpoints .* are kept: rerun the same command to resume"):
            finetune(opts(teacher_data, tiny_lm, out))
    assert json.loads((out / "finetune.json").read_text())["status"] == "training"
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]
    with pytest.raises(ConfigError, match=r"unfinished fine-tune with other settings \(learning_rate\)"):
        finetune(opts(teacher_data, tiny_lm, out, learning_rate=1e-3))
    # a checkpoint cut short while saving (transformers writes its trainer state last) is passed over
    (out / "checkpoints" / "checkpoint-3").mkdir()
    (out / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors").write_bytes(b"")
    monkeypatch.chdir(teacher_data.parent)  # the same data, written another way: still the same run
    res = finetune(opts(Path(teacher_data.name), tiny_lm, out))
    assert res.resumed_from is not None and res.resumed_from.endswith("checkpoint-2") and res.steps == 4
    assert json.loads((out / "finetune.json").read_text())["status"] == "finished"


def test_a_full_gpu_says_how_to_start_over_in_less_memory(teacher_data, tiny_lm, tmp_path, monkeypatch) -> None:
    """The checkpoints resume only with their batch size, so the way on is a fresh start with the same
    examples per step in smaller batches; the command it names is accepted."""
    from reallod.errors import OutOfMemory
    from tests.cli_helpers import CUDA_OOM_SAID, cuda_out_of_memory

    out = tmp_path / "student"
    with monkeypatch.context() as m:
        _interrupt_at(m, 3, cuda_out_of_memory())
        with pytest.raises(OutOfMemory) as e:
            finetune(opts(teacher_data, tiny_lm, out))
    assert str(e.value) == (f"{CUDA_OOM_SAID} (fine-tuning at step 3 with --batch-size 2); the checkpoints in "
                            f"{out / 'checkpoints'} resume only with the settings they were made with: start over "
                            "with --overwrite --batch-size 1 --grad-accum 2 (the same examples per step in smaller "
                            "batches)")
    res = finetune(opts(teacher_data, tiny_lm, out, overwrite=True, batch_size=1, grad_accum=2))
    assert res.steps == 4 and res.resumed_from is None


def test_ctrl_c_saves_a_checkpoint_then_stops(teacher_data, tiny_lm, tmp_path, monkeypatch) -> None:
    out = tmp_path / "student"
    evaluated = []
    monkeypatch.setattr(trainer_mod, "_trainer", _counting_evaluations(trainer_mod._trainer, evaluated))
    with monkeypatch.context() as m:
        _interrupt_at(m, 3, "ctrl-c")
        with pytest.raises(Interrupted, match="stopped at step 3 and saved a checkpoint"):
            finetune(opts(teacher_data, tiny_lm, out, save_steps=100))
    assert [p.name for p in (out / "checkpoints").glob("checkpoint-*")] == ["checkpoint-3"]
    assert evaluated == []  # a whole validation pass ran after the checkpoint, on the way out
    assert finetune(opts(teacher_data, tiny_lm, out, save_steps=100)).resumed_from.endswith("checkpoint-3")


def _counting_evaluations(make_trainer, evaluated: list):
    def counting(*a, **kw):
        t = make_trainer(*a, **kw)
        evaluate = t.evaluate

        def counted(*args, **kwargs):
            evaluated.append(t.state.global_step)
            return evaluate(*args, **kwargs)

        t.evaluate = counted
        return t

    return counting


def test_the_last_loss_and_tokens_are_the_last_steps(teacher_data, tiny_lm, tmp_path) -> None:
    """transformers logs every logging_steps: the 'last training loss' and the tokens were step 1's of a
    3-step run logged every 2 (logging_first_step), the tokens a third of those trained on."""
    out = tmp_path / "student"
    res = finetune(opts(teacher_data, tiny_lm, out, max_steps=3, logging_steps=2))
    record = json.loads((out / "finetune.json").read_text())
    assert [h["step"] for h in record["train_losses"]] == [1, 2, 3]
    assert res.train_loss == record["train_losses"][-1]["loss"]
    every = finetune(opts(teacher_data, tiny_lm, tmp_path / "every", max_steps=3, logging_steps=1))
    assert res.tokens == every.tokens > 0


def test_bad_input_is_a_clear_error(teacher_data, tiny_lm, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"--base .*no-such-model: model folder not found"):
        finetune(opts(teacher_data, tmp_path / "no-such-model", tmp_path / "a"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"cannot load the base model .*broken"):
        finetune(opts(teacher_data, broken, tmp_path / "b"))
    with pytest.raises(DataError, match=r"not an sft-data folder \(no manifest.json\)"):
        finetune(opts(tmp_path, tiny_lm, tmp_path / "c"))
    with pytest.raises(ConfigError, match=r"unknown role 'judge'"):
        finetune(opts(teacher_data, tiny_lm, tmp_path / "d", role="judge"))
    with pytest.raises(DataError, match=r"every reflector training example is longer than --max-length 16"):
        finetune(opts(teacher_data, tiny_lm, tmp_path / "e", max_length=16))
    assert not (tmp_path / "a").exists()
    # nan passes every comparison, inf ran to an unexpected OverflowError (or trained to a nan loss) and
    # left an unfinished fine-tune that the corrected rerun was refused onto
    for bad in ({"epochs": float("inf")}, {"epochs": float("nan")}, {"learning_rate": float("nan")},
                {"learning_rate": float("inf")}):
        name = "--" + next(iter(bad)).replace("_", "-")
        with pytest.raises(ConfigError, match=rf"{name} must be a finite number above 0, got (nan|inf)"):
            finetune(opts(teacher_data, tiny_lm, tmp_path / "f", **bad))
        assert not (tmp_path / "f").exists()
    empty = tmp_path / "empty-data"
    shutil.copytree(teacher_data, empty)
    (empty / "reflector" / "train.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"reflector/train\.jsonl: no reflector training examples in the file"):
        finetune(opts(empty, tiny_lm, tmp_path / "h"))  # it said every example was longer than --max-length
    (empty / "reflector" / "train.jsonl").write_text('{"messages": 5}\n')
    with pytest.raises(DataError, match=r"train\.jsonl:1: not an sft-data example: \"messages\" must be a list of "
                                        r"messages, got 5"):  # it said "'int' object is not subscriptable"
        finetune(opts(empty, tiny_lm, tmp_path / "h"))
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_lm, damaged)
    (damaged / "model.safetensors").write_bytes(os.urandom(100))
    with pytest.raises(ConfigError, match=r"cannot load the base model .*damaged as a causal language model: "
                                          r"SafetensorError"):
        finetune(opts(teacher_data, damaged, tmp_path / "g"))


def test_a_vlm_example_reads_images_only_inside_its_dataset_folder(tmp_path) -> None:
    from PIL import Image

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (8, 6), "red").save(data / "images" / "view.png")
    Image.new("RGB", (8, 6)).save(tmp_path / "outside.png")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]},
                {"role": "assistant", "content": "a cat"}]
    train = data / "train.jsonl"
    train.write_text(json.dumps({"messages": messages, "images": ["images/view.png"]}) + "\n")
    [row] = _vision_rows(train, data)
    assert row["images"][0].size == (8, 6) and row["images"][0].mode == "RGB"
    for rel in ("../outside.png", str(tmp_path / "outside.png")):
        train.write_text("\n" + json.dumps({"messages": messages, "images": [rel]}) + "\n")
        with pytest.raises(DataError, match=r"train\.jsonl:2: .*not a path inside the dataset folder"):
            _vision_rows(train, data)


def test_the_vlm_role_tunes_a_vision_language_model(teacher_data, tiny_lm, tmp_path) -> None:
    vlm = save_tiny_vlm(tmp_path / "tiny-vlm")
    out = tmp_path / "vlm-student"
    res = finetune(opts(teacher_data, vlm, out, role="vlm", max_steps=2, batch_size=2))
    assert res.steps == 2 and (out / "adapter_config.json").is_file() and res.val_losses
    backend = TransformersBackend(str(vlm), kind="image_text_to_text", adapter=out)
    from PIL import Image

    msgs = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (40, 30))},
                                         {"type": "text", "text": "What is it?"}]}]
    assert asyncio.run(backend.complete(msgs, max_tokens=4)).completion_tokens > 0
    with pytest.raises(ConfigError, match="tiny-vlm-missing: model folder not found"):
        finetune(opts(teacher_data, tmp_path / "tiny-vlm-missing", tmp_path / "v2", role="vlm"))
    with pytest.raises(ConfigError, match="as a vision-language"):  # a language model is no VLM
        finetune(opts(teacher_data, tiny_lm, tmp_path / "v3", role="vlm"))


def test_cli_finetune_and_agreement(teacher_data, tiny_lm, tmp_path, capsys) -> None:
    out = tmp_path / "student"
    code, stdout, err = run_cli(["agent", "finetune", teacher_data, "--role", "planner", "--base", tiny_lm,
                                 "--out", out, "--max-steps", "2", "--batch-size", "2", "--no-progress"], capsys)
    assert code == 0, err
    assert "2 step(s) on" in stdout and "validation loss at epoch" in stdout and f"adapter: {out}" in stdout
    code, _, err = run_cli(["agent", "finetune", teacher_data, "--role", "planner", "--base", tiny_lm,
                            "--out", out, "--max-steps", "2", "--no-progress"], capsys)
    assert code == 2 and "holds a finished fine-tune" in err and "Traceback" not in err
    cfg = tmp_path / "student.yaml"
    cfg.write_text(f"roles:\n  reflector: {{backend: transformers, model: {tiny_lm}}}\n"
                   f"  planner: {{backend: transformers, model: {tiny_lm}, adapter: student, max_tokens: 8}}\n"
                   f"  rewriter: {{backend: transformers, model: {tiny_lm}}}\n")
    code, stdout, err = run_cli(["agent", "agreement", teacher_data, "--role", "planner", "--config", cfg,
                                 "--limit", "3"], capsys)
    assert code == 0, err
    assert "planner on val: " in stdout and " of 3 decision(s) equal the teacher's" in stdout


def test_agreement_names_a_damaged_example_before_loading_a_model(teacher_data, tmp_path, capsys) -> None:
    """A hand-edited split gave 'unexpected JSONDecodeError' (or DecisionError), exit 1, no file or line."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(teacher_data, data)
    val = data / "planner" / "val.jsonl"
    lines = val.read_text().splitlines()
    lines[1] = '{"messages": [truncated'
    val.write_text("\n".join(lines) + "\n")
    cfg = tmp_path / "never-loaded.yaml"  # the error comes first: no model is loaded for it
    cfg.write_text("roles:\n  reflector: &m {backend: transformers, model: /no/such/model}\n"
                   "  planner: *m\n  rewriter: *m\n")
    code, _, err = run_cli(["agent", "agreement", data, "--role", "planner", "--config", cfg], capsys)
    assert code == 2 and f"{val}:2: not an sft-data example of the planner role" in err, err
    lines[1] = json.dumps({"messages": [{"role": "user", "content": "q"},
                                        {"role": "assistant", "content": '{"state": "maybe"}'}]})
    val.write_text("\n".join(lines) + "\n")
    code, _, err = run_cli(["agent", "agreement", data, "--role", "planner", "--config", cfg], capsys)
    assert code == 2 and f"{val}:2: " in err and "maybe" in err, err


def test_a_dataset_rebuilt_in_place_is_not_resumed_onto(teacher_data, tiny_lm, tmp_path) -> None:
    """sft-data --overwrite at the same path: the unfinished fine-tune would have gone on with other data."""
    from reallod.finetune.sft_data import read_manifest

    out = tmp_path / "student"
    out.mkdir()
    o = opts(teacher_data, tiny_lm, out)
    manifest = read_manifest(teacher_data)
    started = {**manifest, "val_images": ["another.jpg"]}
    (out / "finetune.json").write_text(json.dumps({"status": "training", "settings": o.settings(),
                                                   "data_manifest": trainer_mod._manifest_view(started)}))
    with pytest.raises(ConfigError, match="unfinished fine-tune of another dataset"):
        prepare_out(o, manifest)
    (out / "finetune.json").write_text(json.dumps({"status": "training", "settings": o.settings(),
                                                   "data_manifest": trainer_mod._manifest_view(manifest)}))
    assert prepare_out(o, manifest) == (None, False)  # the same data: resumes (no checkpoint yet)


def _served_config(tmp_path: Path, url: str) -> Path:
    cfg = tmp_path / "served.yaml"
    cfg.write_text(f"retry: {{backoff_s: 0.01, max_backoff_s: 0.02}}\n"
                   f"roles:\n  planner: {{backend: openai, model: fake, base_url: '{url}', timeout_s: 5}}\n")
    return cfg


def test_agreement_takes_the_server_options_and_names_a_server_that_is_down(teacher_data, tmp_path, capsys) -> None:
    """agreement had no --base-url (the docs ran it with --config vllm), and a server that was down gave
    'unexpected BackendError', exit 1."""
    code, _, err = run_cli(["agent", "agreement", teacher_data, "--role", "planner", "--config",
                            _served_config(tmp_path, "http://127.0.0.1:8/v1"), "--base-url", "http://127.0.0.1:9/v1",
                            "--limit", "1"], capsys)
    assert code == 2 and "Traceback" not in err and "unexpected" not in err, err
    assert "127.0.0.1:9" in err and "endpoint unreachable" in err and "server" in err, err


def test_agreement_waits_as_a_rate_limited_server_says(teacher_data, tmp_path, capsys) -> None:
    """It called the bare backend: the first 429 ended the measurement ('failed on example 2 (rate_limit')."""
    import random

    from tests.agent.fake_openai_server import FakeChatServer, chat_reply, error_reply, valid_decision

    rng, asked = random.Random(0), []

    def respond(body):
        asked.append(1)
        if len(asked) % 2 == 0:
            return error_reply(429, "slow down", {"retry-after": "0"})
        return chat_reply(valid_decision(body, rng))

    with FakeChatServer(respond) as server:
        code, out, err = run_cli(["agent", "agreement", teacher_data, "--role", "planner", "--config",
                                  _served_config(tmp_path, server.url), "--limit", "3"], capsys)
    assert code == 0, err
    assert len(asked) == 5 and "3 of 3 decision(s)" in out, out


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (no except, no finally of the code under test)."""


def test_a_finetune_killed_while_merging_resumes_and_merges(teacher_data, tiny_lm, tmp_path, monkeypatch) -> None:
    """Killed inside merge_and_unload (after the adapter was saved, before finetune.json said finished), the
    same command said 'holds a finished fine-tune ...; pass --overwrite' for ever: the adapter file was taken
    for a finished run. It resumes from the last checkpoint (no step past the end) and saves and merges."""
    import peft
    from safetensors.torch import load_file

    out = tmp_path / "student"

    def killed_while_merging(self, *a, **kw):
        (out / "merged").mkdir()
        (out / "merged" / "model.safetensors").write_bytes(b"half")
        raise _Killed

    with monkeypatch.context() as m:
        m.setattr(peft.PeftModel, "merge_and_unload", killed_while_merging, raising=False)
        with pytest.raises(_Killed):
            finetune(opts(teacher_data, tiny_lm, out, merge=True))
    assert (out / "adapter_config.json").is_file()
    assert json.loads((out / "finetune.json").read_text())["status"] == "training"
    trained = load_file(out / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors")
    res = finetune(opts(teacher_data, tiny_lm, out, merge=True))
    assert res.steps == 4 and res.resumed_from.endswith("checkpoint-4") and res.merged == out / "merged"
    record = json.loads((out / "finetune.json").read_text())
    assert record["status"] == "finished" and record["steps"] == 4 and record["train_losses"]
    assert not (out / "checkpoints").exists()
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter.keys() == trained.keys() and all(torch.equal(adapter[k], trained[k]) for k in trained)
    assert (out / "merged" / "config.json").is_file()
    TransformersBackend(str(out / "merged")).load()  # the half-written weights were replaced
    again = finetune(opts(teacher_data, tiny_lm, out, merge=True))
    assert again.finished_before and again.steps == 4 and again.merged == out / "merged"
    with pytest.raises(ConfigError, match="holds a finished fine-tune"):
        finetune(opts(teacher_data, tiny_lm, out, merge=True, learning_rate=1e-3))


def test_an_out_that_is_a_file_or_inside_a_dataset_is_refused_before_loading(teacher_data, tiny_lm, tmp_path,
                                                                            monkeypatch) -> None:
    """`--out victim.trace.jsonl --overwrite` loaded the model, then failed 'Not a directory'; an --out inside
    the sft-data folder was trained into (`sft-data --overwrite` deletes it with the dataset)."""
    import shutil

    data = tmp_path / "sft"
    shutil.copytree(teacher_data, data)

    def no_model(*a, **kw):
        raise AssertionError("the base model was loaded")

    monkeypatch.setattr(trainer_mod, "load_base", no_model)
    victim = tmp_path / "victim.trace.jsonl"
    victim.write_text('{"keep": "me"}\n')
    for overwrite in (True, False):
        with pytest.raises(ConfigError, match=r"--out .*victim\.trace\.jsonl is a file, not a folder"):
            finetune(opts(data, tiny_lm, victim, overwrite=overwrite))
    assert victim.read_text() == '{"keep": "me"}\n'
    for out in (data / "student", data / "reflector" / "student", data):
        with pytest.raises(ConfigError, match=rf"--out .* lies inside the sft-data folder {data}.*outside it"):
            finetune(opts(data, tiny_lm, out, overwrite=True))
    assert not (data / "student").exists() and not (data / "reflector" / "student").exists()
    assert (data / "manifest.json").is_file()
    holder = tmp_path / "holder"
    holder.mkdir()
    (holder / "finetune.json").write_text(json.dumps({"status": "finished"}))
    shutil.copytree(teacher_data, holder / "sft")
    with pytest.raises(ConfigError, match=r"--out .*holder holds the data"):  # --overwrite would delete it
        finetune(opts(holder / "sft", tiny_lm, holder, overwrite=True))
    assert (holder / "sft" / "manifest.json").is_file()


def test_a_split_with_a_byte_that_is_not_utf8_is_named_by_file_and_line(teacher_data, tiny_lm, tmp_path) -> None:
    """A non-UTF-8 byte gave 'unexpected UnicodeDecodeError ... position 72888', no file, no line."""
    import shutil

    data = tmp_path / "sft"
    shutil.copytree(teacher_data, data)
    for role in ("reflector", "vlm"):
        train = data / role / "train.jsonl"
        lines = train.read_bytes().split(b"\n")
        lines[2] = lines[2][:40] + b"\xff" + lines[2][41:]
        train.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=rf"{data / 'reflector' / 'train.jsonl'}:3: not UTF-8 text \(byte 0xff at "
                                        r"column 41\)"):
        finetune(opts(data, tiny_lm, tmp_path / "student"))
    with pytest.raises(DataError, match=rf"{data / 'vlm' / 'train.jsonl'}:3: not UTF-8 text"):
        _vision_rows(data / "vlm" / "train.jsonl", data)


@pytest.mark.parametrize(("flags", "tty", "expected"), [([], False, False), ([], True, True),
                                                        (["--progress"], False, True), (["--no-progress"], True, False)])
def test_the_progress_bar_is_on_a_terminal_unless_asked(tmp_path, capsys, monkeypatch, flags, tty, expected) -> None:
    """It was on by default, so a redirected log got the bar's every redraw; other commands ask the terminal."""
    seen = []

    def record(opts):
        seen.append(opts.progress)
        raise ConfigError("stopped here")

    monkeypatch.setattr(trainer_mod, "finetune", record)
    monkeypatch.setattr("sys.stderr.isatty", lambda: tty, raising=False)
    code, _, _ = run_cli(["agent", "finetune", tmp_path / "d.jsonl", "--role", "planner", "--base", "b", "--out",
                          tmp_path / "o", *flags], capsys)
    assert code == 2 and seen == [expected]


def test_gradient_checkpointing_trains_and_uses_the_name_transformers_keeps(teacher_data, tiny_lm, tmp_path,
                                                                            monkeypatch) -> None:
    """``gradient_checkpointing`` is a deprecated alias in transformers 5.x (gone in v6): passing it warned
    at every run. The option is on by default on a GPU only, so here it is asked for."""
    made = []
    make_trainer = trainer_mod._trainer
    monkeypatch.setattr(trainer_mod, "_trainer", lambda *a, **kw: made.append(make_trainer(*a, **kw)) or made[-1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = finetune(opts(teacher_data, tiny_lm, tmp_path / "student", max_steps=2, gradient_checkpointing=True))
    assert res.steps == 2 and res.train_loss is not None
    assert made[0].args.gradient_checkpointing
    assert any(getattr(m, "gradient_checkpointing", False) is True for m in made[0].model.modules())
    said = [str(w.message) for w in caught if "`gradient_checkpointing` is deprecated" in str(w.message)]
    assert said == []


def test_the_adapter_names_its_base_by_an_absolute_folder_and_peft_looks_nowhere_else(teacher_data, tiny_lm, tmp_path,
                                                                                      monkeypatch) -> None:
    """peft names the adapter's base by the model's name, and at each save looks for that base's config.json
    (to tell a resized vocabulary): a GGUF's folder has none, so every checkpoint warned, and a relative
    one (``--base models/x.gguf``: "models") was asked for on the Hugging Face hub."""
    shutil.copytree(tiny_lm, tmp_path / "lm" / "model")
    monkeypatch.chdir(tmp_path)
    load = trainer_mod.load_base
    gguf_folder = tmp_path / "gguf"  # what a GGUF's load is named by: its folder, with no config.json
    gguf_folder.mkdir()

    def named_as_a_gguf_folder(*a, **kw):
        model, tok = load(*a, **kw)
        assert model.name_or_path == str(Path.cwd() / "lm" / "model")  # absolute, though given relative
        model.name_or_path = model.config._name_or_path = str(gguf_folder)
        return model, tok

    monkeypatch.setattr(trainer_mod, "load_base", named_as_a_gguf_folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        finetune(opts(teacher_data, Path("lm/model"), tmp_path / "student", max_steps=2))
    said = [str(w.message) for w in caught if "config file" in str(w.message) or "remote file" in str(w.message)]
    assert said == []
    adapter = json.loads((tmp_path / "student" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(gguf_folder)
