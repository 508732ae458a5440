"""A GGUF language model kept as a transformers folder after its first load.

transformers reads a GGUF's whole metadata three times per load (config, tokenizer, weights) with the
``gguf`` package's pure-Python reader; for a 262,144-token vocabulary (Gemma 3) that is most of the
minute the offline model took to load in every run, while the dequantization itself takes seconds.
So the first float32 load of a local GGUF (the CPU default) keeps what it produced, the tokenizer and
the dequantized weights, as a plain transformers folder under ``$REALLOD_CACHE/models/converted``, and
later loads read that in seconds, in any dtype: the same tensors and the same tokens, bit for bit, as
loading the GGUF again (transformers dequantizes to float32 and casts from there either way).

Only what transformers dequantized whole is kept (weights it keeps packed, for the architectures its
GGUF kernels run, would grow several times over), and only up to :data:`MAX_BYTES` of weights: the
copy takes as much disk as the model takes memory. The copy is named by the GGUF's content and the
transformers version, so a changed file or an upgrade converts again instead of reusing a copy that no
longer matches. Writing goes through a temporary folder and a rename: a copy is whole or absent.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path
from typing import Any

from reallod.data.io import make_temp_dir
from reallod.hub import config_errors, one_line
from reallod.llm.backends.packaged import cache_dir

MAX_BYTES = 8 * 2**30
"""The largest model (its weights' bytes in the loaded dtype) kept as a copy."""
FREE_MARGIN = 2**30
"""Disk space a copy leaves free, so it never fills the disk a running job writes to."""


def copy_folder(identity: str) -> Path | None:
    """Where the copy of the GGUF that ``identity`` names (``file:...``, its content) goes; None for a GGUF
    that is not a local file (a hub id names no fixed content)."""
    if not identity.startswith("file:"):
        return None
    import transformers

    key = hashlib.sha256(f"{identity}|transformers {transformers.__version__}".encode()).hexdigest()[:16]
    stem = Path(identity.removeprefix("file:").split(":", 1)[0]).stem
    return cache_dir() / "models" / "converted" / f"{stem}-{key}"


def load_copy(identity: str, dtype: Any, source: str) -> tuple[Any, Any] | None:
    """(tokenizer, causal LM in ``dtype``) from the copy an earlier load kept; None when there is none, or
    when it does not load (damaged, or files deleted from it): that one is removed, so the GGUF is loaded
    and kept anew. Both are named ``source`` (the GGUF's folder), as loading the GGUF names them, so what
    records the name (an adapter's ``base_model_name_or_path``) is the same whether a copy was read or not."""
    folder = copy_folder(identity)
    if folder is None or not folder.exists():
        return None
    import transformers as tf
    from safetensors import SafetensorError

    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(folder)
        model = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError, KeyError, RuntimeError, *config_errors(), SafetensorError) as e:
        print(f"warning: the converted copy {folder} does not load ({type(e).__name__}: {one_line(e)}): "
              "loading the GGUF again", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    tokenizer.name_or_path = model.name_or_path = source
    return tokenizer, model


def keep_copy(identity: str, tokenizer: Any, model: Any) -> Path | None:
    """Save a GGUF model just loaded as a transformers folder for the next load; None when it is not kept
    (not float32, packed weights, too big, too little disk, or the cache cannot be written: then a
    warning, and the run goes on with the model it loaded)."""
    import torch

    folder = copy_folder(identity)
    tensors = list(model.state_dict().values())
    if folder is None or folder.is_dir() or not all(t.dtype == torch.float32 for t in tensors):
        return None
    size = sum(t.numel() * t.element_size() for t in tensors)
    if size > MAX_BYTES:
        return None
    tmp: Path | None = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(folder)  # one a killed process left (a model's size) goes at the next copy
        if shutil.disk_usage(folder.parent).free < size + FREE_MARGIN:
            return None
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:  # the weights are plain tensors now; transformers refuses to save a model still marked GGUF
            quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / "config.json").is_file():  # not another process's copy, kept first
                raise
    except (OSError, ValueError, RuntimeError) as e:  # a full or read-only disk, a model transformers cannot save
        print(f"warning: cannot keep a converted copy of the GGUF in {folder.parent} ({getattr(e, 'strerror', None) or e}): "
              "it is converted again at every load", file=sys.stderr)
        return None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
