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
