"""Every loader asks :mod:`reallod.hub` first: a mistyped local path is one line at once. Before, the
agent's transformers models, the CLIP filter and the fine-tuning base sent it to the hub, which took
about 50 s of retries and blamed the network."""

from __future__ import annotations

import time

import pytest

from reallod.errors import ConfigError


def _agent_model(name: str) -> None:
    from reallod.llm.backends.transformers_backend import _load_base

    _load_base(name, None, "causal_lm", "float32", False)


def _agent_gguf(name: str) -> None:
    from reallod.llm.backends.transformers_backend import _load_base

    _load_base(name, "model.Q8_0.gguf", "causal_lm", "float32", False)


def _finetune_base(name: str) -> None:
    from reallod.finetune.trainer import load_base

    load_base(name, None, vision=False)


def _clip_model(name: str) -> None:
    from reallod.engine.clip_filter import RegionTextScorer

    RegionTextScorer.load(name)


@pytest.mark.parametrize("load, prefix, kind", [(_agent_model, "", "model"), (_agent_gguf, "", "GGUF model"),
                                                (_finetune_base, "--base ", "model"),
                                                (_clip_model, "--clip-model ", "model")])
def test_a_mistyped_local_model_path_fails_at_once_without_the_hub(load, prefix, kind, monkeypatch, tmp_path):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("a local path was sent to the hub")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", no_network)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()  # the parent exists: models/nope is a path, not ORG/NAME
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load("models/nope")
    assert time.perf_counter() - start < 5
    assert str(err.value) == f"{prefix}models/nope: {kind} folder not found (a local path; hub ids look like ORG/NAME)"


def test_a_folder_that_is_not_a_model_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"empty: not a model folder \(expected a folder with config\.json\)$"):
        _agent_model(str(tmp_path / "empty"))


def test_a_hub_model_is_stamped_with_the_commit_the_hub_named(monkeypatch, tmp_path):
    """Loaded from the hub, a model has no files here to stamp: a resume compares the commit instead,
    so a repo updated upstream between a kill and its resume is not taken for the same model."""
    import types

    import huggingface_hub

    from reallod.hub import resolve_source
    from reallod.model.loading import files_stamp, weights_stamp

    commit = ["a" * 40]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo, **kw: types.SimpleNamespace(sha=commit[0]))
    monkeypatch.chdir(tmp_path)
    assert resolve_source("org/detector") == "org/detector"
    before = weights_stamp("org/detector"), files_stamp("org/detector", ["config.json"])
    assert before == ([["org/detector", "revision", "a" * 40]], {"org/detector@revision": "a" * 40})
    commit[0] = "b" * 40  # pushed to since
    resolve_source("org/detector")
    assert (weights_stamp("org/detector"), files_stamp("org/detector", ["config.json"])) != before
    assert weights_stamp(tmp_path) == [] and files_stamp("org/other", ["config.json"]) == {}  # not looked up


def test_a_name_that_is_neither_a_folder_here_nor_a_fetchable_hub_id_says_both(monkeypatch, tmp_path):
    """README's placeholder `models/real-model-t`, with no models/ folder here, is a hub id by the documented
    rule; offline it was called only "cannot reach the hub for models/real-model-t", as if a download had been
    meant."""
    from huggingface_hub import constants

    from reallod.hub import resolve_source

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # a closed port: unreachable
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(ConfigError) as err:
        resolve_source("models/real-model-t")
    assert str(err.value).startswith("models/real-model-t: no such model folder here, and as a hub id it cannot be "
                                     "fetched: cannot reach the Hugging Face hub for models/real-model-t (offline?)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"^models/real-model-t: no such model folder here, and as a hub id it "
                       r"cannot be fetched: .*HF_HUB_OFFLINE is set"):
        resolve_source("models/real-model-t")


def test_a_training_checkpoint_or_work_dir_as_the_model_names_the_model_folder_in_it(tmp_path, capsys):
    """A training checkpoint was called "not a model folder (...; convert MMDetection .pth checkpoints with
    convert-checkpoint)": the model training wrote is in its model/ (a work dir's: best/)."""
    from reallod.model.hf_folder import check_local_folder
    from tests.cli_helpers import run_cli

    work = tmp_path / "work"
    ckpt = work / "checkpoints" / "ckpt-00000003"
    for model in (ckpt / "model", work / "best"):
        model.mkdir(parents=True)
        (model / "config.json").write_text("{}")
    (ckpt / "state.json").write_text("{}")
    for given, inside in ((ckpt, ckpt / "model"), (work, work / "best")):
        with pytest.raises(ConfigError) as err:
            check_local_folder(str(given))
        msg = str(err.value)
        assert msg.startswith(f"{given}: not a model folder (no config.json)") and msg.endswith(f"in it, {inside}")
        assert "convert-checkpoint" not in msg
    code, _, err = run_cli(["detect", tmp_path, ckpt, "--texts", "dog"], capsys)
    assert code == 2 and f"pass the model folder in it, {ckpt / 'model'}" in err


def test_a_work_dir_without_best_names_its_latest_checkpoints_model(tmp_path):
    """The shipped real-model configs hold out no data, so their runs write no best/: such a work dir was
    told to convert an MMDetection checkpoint."""
    from reallod.model.hf_folder import check_local_folder

    work = tmp_path / "work"
    for step in (3, 12):
        (work / "checkpoints" / f"ckpt-{step:08d}" / "model").mkdir(parents=True)
        (work / "checkpoints" / f"ckpt-{step:08d}" / "model" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=rf"pass the model folder in it, {work}/checkpoints/ckpt-00000012/model$"):
        check_local_folder(str(work))
