"""In-process models through transformers: causal LMs (GGUF files included) and image-text-to-text VLMs.

One model instance is loaded per (model, file, kind, dtype, device, adapter) and shared by every role
that names it; a role with a LoRA ``adapter`` gets the base with the adapter merged in. Generation is blocking, so it runs in a worker thread and the event loop stays free; a lock per
model keeps two roles from generating on it at once.

Structured output for causal LMs is enforced by constrained decoding: for a flat JSON-object schema
(the shape of every decision), the object is written field by field — keys and punctuation are forced,
an enumerated field is chosen by scoring each allowed value's likelihood, a string field is generated
until its closing quote (empty only where the schema gives no ``minLength``, so a student reproduces a
teacher's empty answers). ``choices`` are scored the same way. Any other schema is only asked for in the
prompt. VLMs generate freely (the processor's chat template places the image); the caller parses.

A model with a chat template is prompted through it; a base model without one (like the offline Gemma
GGUF) gets a plain completion prompt.

Loading and generating run in a daemon thread of their own (:mod:`reallod.llm.threads`), not the
loop's executor: Ctrl-C during the minute a model takes to load stops the run at once.

:attr:`TransformersBackend.model_identity` names the model by what it is, not where it sits (see
:func:`model_identity`), so a journal and the response cache stay valid when the cache folder moves.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from reallod.errors import ConfigError, out_of_memory, release_after_oom
from reallod.hub import config_errors, one_line, resolve_source
from reallod.llm.backends.base import BackendError, Completion, Message
from reallod.llm.backends.gguf_copy import keep_copy, load_copy
from reallod.llm.threads import in_daemon_thread

KINDS: tuple[str, ...] = ("causal_lm", "image_text_to_text")
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16", "float64")
DEVICES: tuple[str, ...] = ("cpu", "cuda", "cuda:N", "mps")
"""The devices a model can be put on (``cuda:N``: the GPU numbered N, from 0)."""
DEFAULT_MAX_NEW_TOKENS = 128
_DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")


def dtype_problem(dtype: Any) -> str | None:
    """Why ``dtype`` is not one a model can be loaded in, or None."""
    return None if dtype in DTYPES else f"expected one of {', '.join(DTYPES)}, got {dtype!r}"


def device_problem(device: Any) -> str | None:
    """Why ``device`` is not the name of a device, or None (whether this machine has it:
    :func:`device_missing`)."""
    if isinstance(device, str) and _DEVICE.fullmatch(device):
        return None
    return f"expected one of {', '.join(DEVICES)}, got {device!r}"


def device_missing(device: str) -> str | None:
    """Why this machine cannot hold a model on ``device`` (a valid name), or None: checked where the model
    runs, before any task, since a model that cannot be put there fails every task."""
    if device == "cpu":
        return None
    import torch

    if device == "mps":
        return None if torch.backends.mps.is_available() else "this machine has no Apple GPU (MPS): use device: cpu"
    if not torch.cuda.is_available():
        built = "" if torch.version.cuda else ", and this torch is built without CUDA support"
        return f"this machine has no CUDA GPU (torch.cuda.is_available() is false{built}): use device: cpu"
    count, index = torch.cuda.device_count(), int(device.partition(":")[2] or 0)
    if index >= count:
        return f"this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
    return None


@dataclass
class _Loaded:
    model: Any
    tokenizer: Any  # the tokenizer (causal LM) or the processor (VLM)
    lock: threading.Lock = field(default_factory=threading.Lock)
    quote_ids: frozenset[int] = frozenset()  # tokens that contain '"' or a newline
    blank_ids: frozenset[int] = frozenset()  # whitespace-only tokens
    cache_kw: str = "cache"  # transformers renamed ``past_key_values`` to ``cache`` during 5.x


_CACHE: dict[tuple[Any, ...], _Loaded] = {}
_CACHE_LOCK = threading.Lock()


def _load(model: str, gguf_file: str | None, kind: str, dtype: str, device: str,
          trust_remote_code: bool, adapter: str | None = None) -> _Loaded:
    """The shared instance; any failure to load it is a ConfigError, which stops the run once instead of
    failing each task (the workflow turns other errors into that task's failure)."""
    key = (model, gguf_file, kind, dtype, device, adapter)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        try:
            loaded = _load_new(model, gguf_file, kind, dtype, device, trust_remote_code, adapter)
        except ConfigError:
            raise
        except Exception as e:  # a device it cannot go to, memory, a broken file...: no task can run
            raise ConfigError(f"cannot load {kind} model {model}" + (f" ({gguf_file})" if gguf_file else "")
                              + f" with dtype {dtype} on {device}: {type(e).__name__}: {e}") from e
        _CACHE[key] = loaded
        return loaded


def _load_new(model: str, gguf_file: str | None, kind: str, dtype: str, device: str,
              trust_remote_code: bool, adapter: str | None) -> _Loaded:
    if adapter is None:
        tok, net = _load_base(model, gguf_file, kind, dtype, trust_remote_code)
    else:
        tok, net = _load_adapted(model, gguf_file, kind, dtype, device, trust_remote_code, adapter)
    net.to(device).eval()
    loaded = _Loaded(net, tok)
    if kind == "causal_lm":
        loaded.quote_ids, loaded.blank_ids = _token_classes(tok)
        params = inspect.signature(net.forward).parameters
        loaded.cache_kw = "cache" if "cache" in params else "past_key_values"
    return loaded


def _load_base(model: str, gguf_file: str | None, kind: str, dtype: str, trust_remote_code: bool) -> tuple[Any, Any]:
    """(tokenizer or processor, model) from the hub, a folder or a GGUF file (a local GGUF language model
    from the copy its first float32 load kept: :mod:`reallod.llm.backends.gguf_copy`); a ConfigError if it cannot."""
    import torch
    import transformers as tf
    from safetensors import SafetensorError

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = resolve_source(model, "GGUF model" if gguf_file else "model")  # a typo: at once, not after hub retries
    identity = gguf_identity(model, gguf_file) if kind == "causal_lm" else None
    if identity and (kept := load_copy(identity, torch_dtype, model)) is not None:
        return kept
    try:
        if kind == "causal_lm":
            tok = tf.AutoTokenizer.from_pretrained(model, **kwargs)
            net = tf.AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype, **kwargs)
        else:
            tok = tf.AutoProcessor.from_pretrained(model, **kwargs)
            net = tf.AutoModelForImageTextToText.from_pretrained(model, dtype=torch_dtype, **kwargs)
    except (OSError, ValueError, ImportError, KeyError, RuntimeError, *config_errors(), SafetensorError) as e:
        raise ConfigError(f"cannot load {kind} model {model}" + (f" ({gguf_file})" if gguf_file else "")
                          + f": {type(e).__name__}: {one_line(e)}") from e
    if identity:
        keep_copy(identity, tok, net)  # the next load reads that in seconds instead of a minute
    return tok, net


def gguf_identity(model: str, gguf_file: str | None) -> str | None:
    """The identity a kept copy of this GGUF is named by; None without a GGUF, or when the file cannot be
    read (loading it says why)."""
    try:
        return model_identity(model, gguf_file) if gguf_file else None
    except OSError:
        return None


def _load_adapted(model: str, gguf_file: str | None, kind: str, dtype: str, device: str, trust_remote_code: bool,
                  adapter: str) -> tuple[Any, Any]:
    """The base model with a PEFT (LoRA) adapter merged into its weights: a plain model again, as fast as
    the base. The base comes as a copy of the already loaded instance when another role uses it (a GGUF's
    first load takes a minute, a copy a second), else it is loaded for this adapter alone."""
    base = _CACHE.get((model, gguf_file, kind, dtype, device, None))
    if base is not None:
        tok, net = base.tokenizer, copy.deepcopy(base.model)
    else:
        tok, net = _load_base(model, gguf_file, kind, dtype, trust_remote_code)
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ConfigError(f"adapter {adapter}: not a PEFT adapter folder (no adapter_config.json); "
                          "`reallod agent finetune` writes one")
    try:
        from peft import PeftModel
    except ImportError as e:
        raise ConfigError("an adapter needs peft: pip install 'reallod[tune]'") from e
    try:
        net = PeftModel.from_pretrained(net, adapter).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        raise ConfigError(f"cannot apply adapter {adapter} to {model}"
                          + (f" ({gguf_file})" if gguf_file else "") + f": {type(e).__name__}: {e}") from e
    return tok, net


def _token_classes(tok: Any) -> tuple[frozenset[int], frozenset[int]]:
    """Tokens that contain a quote or a line break (they end a JSON string), and tokens that write nothing
    visible: whitespace, and special tokens, which decoding skips (a string must not start with them, or
    it could end up empty)."""
    quotes, blanks = set(), set(getattr(tok, "all_special_ids", ()))
    for i, t in enumerate(tok.convert_ids_to_tokens(list(range(len(tok))))):
        if not t:
            continue
        if '"' in t or "\n" in t or "\r" in t or t in ("<0x0A>", "<0x22>", "<0x0D>"):
            quotes.add(i)
        elif not t.replace("\u2581", " ").replace("\u0120", " ").strip() or t in ("<0x20>", "<0x09>"):
            blanks.add(i)
    return frozenset(quotes), frozenset(blanks)


def plain_prompt(messages: list[Message]) -> str:
    """A completion prompt for a model without a chat template."""
    lines = []
    for m in messages:
        label = {"system": "Instructions", "user": "User", "assistant": "Assistant"}.get(m["role"], m["role"])
        lines.append(f"{label}:\n{_text_of(m['content'])}\n")
    lines.append("Assistant:\n")
    return "\n".join(lines)


def chat_prompt(tokenizer: Any, messages: list[Message]) -> str:
    """The prompt text a model is given for ``messages``: its chat template with the generation prompt
    when it has one, else :func:`plain_prompt`. Fine-tuning (:mod:`reallod.finetune`) builds its
    examples with this same function, so a student is trained on exactly what it is later asked."""
    if getattr(tokenizer, "chat_template", None):
        chat = [{"role": m["role"], "content": _text_of(m["content"])} for m in messages]
        return tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    return plain_prompt(messages)


def prompt_ids(tokenizer: Any, messages: list[Message]) -> list[int]:
    """The token ids of :func:`chat_prompt` as the backend feeds them (special tokens added only when
    there is no chat template: a template writes its own)."""
    return tokenizer.encode(chat_prompt(tokenizer, messages),
                            add_special_tokens=not getattr(tokenizer, "chat_template", None))


def _field_prefix(i: int, key: str) -> str:
    return ("{" if i == 0 else ", ") + json.dumps(key) + ': "'


def reply_ids(tokenizer: Any, reply: str, schema: dict[str, Any] | None) -> list[int]:
    """The token ids of a reply as the constrained decoder writes it, piece by piece: for a flat schema
    and a reply that is its JSON object (fields in schema order), each field's forced prefix, then an
    enumerated value with its closing quote (as :meth:`_Decoder.choose` scores it) or a string's content
    and then the quote, and the closing brace; any other reply as one piece. Fine-tuning trains on these
    ids, so what a student learns is what the decoder asks it."""
    def enc(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    fields = flat_schema_fields(schema)
    try:
        obj = json.loads(reply)
    except ValueError:
        obj = None
    if not fields or not isinstance(obj, dict) or list(obj) != [f.key for f in fields] \
            or not all(isinstance(v, str) for v in obj.values()):
        return enc(reply)
    ids: list[int] = []
    for i, (key, allowed, _) in enumerate(fields):
        value = json.dumps(obj[key], ensure_ascii=False)[1:-1]
        ids += enc(_field_prefix(i, key))
        ids += enc(value + '"') if allowed is not None else enc(value) + enc('"')
    return ids + enc("}")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(p.get("text", "") for p in content if p.get("type") == "text")


class SchemaField(NamedTuple):
    key: str
    allowed: list[str] | None  # the enumerated values; None for free text
    nonempty: bool  # an enumerated value, or free text with ``minLength`` ≥ 1 (JSON Schema: else may be empty)


def flat_schema_fields(schema: dict[str, Any] | None) -> list[SchemaField] | None:
    """The properties of a flat object schema in order, or None for any other schema."""
    if not schema or schema.get("type") != "object" or not schema.get("properties"):
        return None
    fields: list[SchemaField] = []
    for key, prop in schema["properties"].items():
        if "enum" in prop and all(isinstance(v, str) for v in prop["enum"]):
            fields.append(SchemaField(key, list(prop["enum"]), True))
        elif prop.get("type") == "string":
            fields.append(SchemaField(key, None, int(prop.get("minLength", 0)) > 0))
        else:
            return None
    return fields


class _Decoder:
    """Greedy or sampled decoding over a growing prefix, with the KV cache kept between pieces."""

    def __init__(self, loaded: _Loaded, prompt_ids: list[int], temperature: float) -> None:
        import torch

        self.torch = torch
        self.model, self.tok, self.loaded = loaded.model, loaded.tokenizer, loaded
        self.temperature = temperature
        self.past: Any = None
        self.logits: Any = None
        self.generated = 0
        self.cut = False  # the last piece stopped at its token limit, not where the model ended it
        self.cut_fields: list[str] = []  # the string fields of a JSON reply that did (:meth:`_json`)
        self.feed(prompt_ids)

    def _forward(self, ids: list[int], past: Any, keep: int = 0) -> tuple[Any, Any]:
        """Run ``ids`` after ``past``; return the new cache and the logits of the last ``keep`` tokens
        (all when 0). Projecting only what is needed matters: the LM head dominates on long prompts."""
        t = self.torch.tensor([ids], device=self.model.device)
        out = self.model(input_ids=t, use_cache=True, logits_to_keep=keep, **{self.loaded.cache_kw: past})
        cache = getattr(out, "cache", None)
        return (cache if cache is not None else out.past_key_values), out.logits[0]

    def feed(self, ids: list[int]) -> None:
        if ids:
            self.past, logits = self._forward(ids, self.past, keep=1)
            self.logits = logits[-1]

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def choose(self, options: list[str], suffix: str = "") -> str:
        """The option (followed by ``suffix``) with the highest log-likelihood here; it is fed."""
        torch = self.torch
        best: tuple[float, str, Any, Any] | None = None
        first = torch.log_softmax(self.logits.float(), -1)
        for option in options:
            ids = self.encode(option + suffix)
            past, out = self._forward(ids, copy.deepcopy(self.past))
            score = float(first[ids[0]])
            if len(ids) > 1:  # out[i] predicts ids[i + 1]
                rest = torch.log_softmax(out[:-1].float(), -1)
                score += float(sum(rest[i, ids[i + 1]] for i in range(len(ids) - 1)))
            logits = out[-1]
            if best is None or score > best[0]:
                best = (score, option, past, logits)
        assert best is not None
        _, option, self.past, self.logits = best
        return option

    def _pick(self, logits: Any) -> int:
        if self.temperature and self.temperature > 0:
            probs = self.torch.softmax(logits.float() / self.temperature, -1)
            return int(self.torch.multinomial(probs, 1))
        return int(logits.argmax())

    def string(self, max_tokens: int, *, nonempty: bool = True) -> tuple[str, str]:
        """Generate a JSON string's content up to its closing quote; it starts with a word (whitespace
        alone would be stripped to nothing) and, unless ``nonempty`` is False, the quote cannot come first.

        Returns (content, unfed): the text of the stopping token before its quote is not in the cache
        yet, so the caller feeds ``unfed`` and the closing quote.
        """
        eos = self.tok.eos_token_id
        ids: list[int] = []
        self.cut = False
        for step in range(max_tokens):
            logits = self.logits.clone()
            if step == 0:
                banned = [*self.loaded.blank_ids, *([eos] if eos is not None else []),
                          *(self.loaded.quote_ids if nonempty else ())]
                logits[banned] = float("-inf")
            nxt = self._pick(logits)
            if nxt == eos:
                break
            self.generated += 1
            if nxt in self.loaded.quote_ids:
                before = self.tok.decode(ids, skip_special_tokens=True)
                piece = self.tok.decode([*ids, nxt], skip_special_tokens=True)[len(before):]
                cut = min((piece.find(c) for c in ('"', "\n") if c in piece), default=len(piece))
                return (before + piece[:cut]).strip(), piece[:cut]
            ids.append(nxt)
            self.feed([nxt])
        else:
            self.cut = True
        return self.tok.decode(ids, skip_special_tokens=True).strip(), ""

    def free(self, max_tokens: int) -> str:
        eos = self.tok.eos_token_id
        ids: list[int] = []
        for _ in range(max_tokens):
            nxt = self._pick(self.logits)
            if nxt == eos:
                break
            ids.append(nxt)
            self.feed([nxt])
        else:
            self.cut = True
        self.generated += len(ids)
        return self.tok.decode(ids, skip_special_tokens=True)


SAMPLE_BYTES = 1 << 20
"""Bytes read at the start, middle and end of a local model file for its identity."""


def file_identity(path: str | os.PathLike) -> str:
    """A local model file by name, size and a hash of three samples of its content (start, middle,
    end): cheap for multi-GB files, and two different weights of the same size still differ."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.blake2b(digest_size=12)
    with open(path, "rb") as f:
        for at in sorted({0, max(size // 2 - SAMPLE_BYTES // 2, 0), max(size - SAMPLE_BYTES, 0)}):
            f.seek(at)
            h.update(f.read(SAMPLE_BYTES))
    return f"{path.name}:{size}:{h.hexdigest()}"


def model_identity(model: str, gguf_file: str | None = None) -> str:
    """What a model is, wherever it sits: a local GGUF file or a local folder by its files' names, sizes
    and sampled content (:func:`file_identity`; not the folder's path, so moving ``$REALLOD_CACHE`` or a
    models folder changes nothing), anything else (a hub id) by its id. A packaged GGUF is named by its
    package and version instead (:func:`reallod.llm.backends.packaged.packaged_identity`)."""
    local = Path(model)
    if gguf_file and (local / gguf_file).is_file():
        return "file:" + file_identity(local / gguf_file)
    if local.is_file():
        return "file:" + file_identity(local)
    if local.is_dir():
        files = sorted(p for p in local.iterdir() if p.is_file() and not p.name.startswith("."))
        return "folder:" + ",".join(file_identity(p) for p in files)
    return f"hub:{model}" + (f"/{gguf_file}" if gguf_file else "")


class TransformersBackend:
    """One in-process model. ``kind``: ``causal_lm`` (LLM roles) or ``image_text_to_text`` (VLM).

    ``identity`` names the model for fingerprints and the response cache (default:
    :func:`model_identity` of ``model`` and ``gguf_file``). ``adapter``: a PEFT (LoRA) adapter folder
    (what ``reallod agent finetune`` writes) merged into the base at load time; its files' identity
    joins the model's, so a retrained adapter never reuses the old one's cached answers.

    A model that fails to load is not loaded again: every later call gets the same ConfigError."""

    def __init__(self, model: str, *, gguf_file: str | None = None, kind: str = "causal_lm",
                 dtype: str = "auto", device: str = "cpu", trust_remote_code: bool = False,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, constrained: bool = True,
                 identity: str | None = None, adapter: str | os.PathLike | None = None) -> None:
        if kind not in KINDS:
            raise ConfigError(f"transformers backend: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        for option, problem in (("dtype", dtype_problem(dtype)), ("device", device_problem(device))):
            if problem:
                raise ConfigError(f"transformers backend: {option}: {problem}")
        self.model_id, self.gguf_file, self.kind = model, gguf_file, kind
        self.dtype, self.device, self.trust_remote_code = dtype, device, trust_remote_code
        self.max_new_tokens, self.constrained = max_new_tokens, constrained
        self.adapter = None if adapter is None else str(Path(adapter).resolve())
        self.name = (f"transformers:{model}" + (f"/{gguf_file}" if gguf_file else "")
                     + (f"+adapter:{adapter}" if adapter is not None else ""))
        self.supports_images = kind == "image_text_to_text"
        self._identity = identity
        self._adapter_identity: str | None = None
        self._loaded: _Loaded | None = None
        self._load_error: ConfigError | None = None
        self._load_lock = threading.Lock()

    @property
    def model_identity(self) -> str:
        """The model and what changes its answers (kind, dtype, constrained decoding, ``max_new_tokens``:
        the limit of a role without ``max_tokens``), never its path: what
        :func:`reallod.llm.endpoints.model_id` keys journals' fingerprints and the response cache on.
        Default settings add nothing, so keys made before a setting counted stay valid."""
        if self._identity is None:
            try:
                self._identity = model_identity(self.model_id, self.gguf_file)
            except OSError as e:
                raise ConfigError(f"{self.name}: cannot read the model file: {e.strerror or e}") from e
        if self.adapter is not None and self._adapter_identity is None:
            if not Path(self.adapter).is_dir():
                raise ConfigError(f"{self.name}: the adapter folder {self.adapter} does not exist")
            self._adapter_identity = model_identity(self.adapter)  # its files, not its path
        return (f"transformers:{self._identity}" + (f"+adapter:{self._adapter_identity}" if self.adapter else "")
                + f":{self.kind}:{self.dtype}" + ("" if self.constrained else ":unconstrained")
                + ("" if self.max_new_tokens == DEFAULT_MAX_NEW_TOKENS else f":max_new_tokens={self.max_new_tokens}"))

    def load(self) -> _Loaded:
        """Load (or reuse) the shared model instance; blocking. A failed load is remembered: calls
        in flight together, and later ones, get its error instead of each loading again."""
        if self._loaded is not None:
            return self._loaded
        with self._load_lock:
            if self._load_error is not None:
                raise ConfigError(str(self._load_error)) from self._load_error
            if self._loaded is None:
                try:
                    self._loaded = _load(self.model_id, self.gguf_file, self.kind, self.dtype, self.device,
                                         self.trust_remote_code, self.adapter)
                except ConfigError as e:
                    self._load_error = e
                    raise
            return self._loaded

    async def complete(self, messages: list[Message], *, schema: dict[str, Any] | None = None,
                       choices: list[str] | None = None, max_tokens: int | None = None,
                       temperature: float | None = None) -> Completion:
        # a daemon thread, not the loop's executor: an interrupted run does not wait for the minute a
        # model takes to load, nor for a generation in progress
        return await in_daemon_thread(self._complete, messages, schema, choices,
                                      max_tokens or self.max_new_tokens, temperature or 0.0)

    def _complete(self, messages: list[Message], schema: dict[str, Any] | None, choices: list[str] | None,
                  max_tokens: int, temperature: float) -> Completion:
        loaded = self.load()
        started = time.perf_counter()
        try:
            import torch

            with loaded.lock, torch.inference_mode():
                if self.kind == "image_text_to_text":
                    text, n_in, n_out, cut = self._vlm(loaded, messages, max_tokens, temperature)
                    meta: dict[str, Any] = {"finish_reason": "length" if cut else "stop"}
                else:
                    text, n_in, n_out, meta = self._llm(loaded, messages, schema, choices, max_tokens, temperature)
        except (RuntimeError, ValueError, IndexError, TypeError) as e:
            if (what := out_of_memory(e)) is None:
                raise BackendError(f"{self.name}: generation failed: {type(e).__name__}: {e}") from e
            release_after_oom(e)  # what this reply held, so the next task's fits where it can
            raise BackendError(f"{self.name}: out of memory generating a reply ({what}): this task fails and "
                               "the others go on (a rerun runs the failed ones again); for fewer, give the role a "
                               "smaller max_tokens, or the backend a smaller dtype or a device with more memory"
                               ) from e
        return Completion(text, prompt_tokens=n_in, completion_tokens=n_out, latency_s=time.perf_counter() - started,
                          meta=meta)  # finish_reason as an OpenAI-compatible server's

    def prompt_text(self, messages: list[Message]) -> str:
        return chat_prompt(self.load().tokenizer, messages)

    def _llm(self, loaded: _Loaded, messages: list[Message], schema: dict[str, Any] | None,
             choices: list[str] | None, max_tokens: int, temperature: float) -> tuple[str, int, int, dict[str, Any]]:
        ids = prompt_ids(loaded.tokenizer, messages)
        dec = _Decoder(loaded, ids, temperature)
        fields = flat_schema_fields(schema) if self.constrained else None
        if choices and self.constrained:
            text = dec.choose(list(choices))
        elif fields:
            text = self._json(dec, fields, max_tokens)
        else:
            text = dec.free(max_tokens)
            return text, len(ids), dec.generated, {"finish_reason": "length" if dec.cut else "stop"}
        return text, len(ids), dec.generated, {"finish_reason": "length" if dec.cut_fields else "stop",
                                               "cut_fields": dec.cut_fields}  # never cached when cut

    @staticmethod
    def _json(dec: _Decoder, fields: list[SchemaField], max_tokens: int) -> str:
        """The object, each string field within its share of ``max_tokens``. One that reached it is closed
        there, so the fields after it are still written (a reflector's verdict after its feedback), and
        named in ``dec.cut_fields``: the caller refuses a cut field whose text is kept (an expression)."""
        n_free = sum(1 for f in fields if f.allowed is None)
        per_string = max(4, max_tokens // max(1, n_free))
        obj: dict[str, str] = {}
        for i, (key, allowed, nonempty) in enumerate(fields):
            dec.feed(dec.encode(_field_prefix(i, key)))
            if allowed is None:
                obj[key], unfed = dec.string(per_string, nonempty=nonempty)
                if dec.cut:
                    dec.cut_fields.append(key)
                dec.feed(dec.encode(unfed + '"'))
            else:
                obj[key] = dec.choose(allowed, suffix='"')
        return json.dumps(obj, ensure_ascii=False)

    def _vlm(self, loaded: _Loaded, messages: list[Message], max_tokens: int,
             temperature: float) -> tuple[str, int, int, bool]:
        processor = loaded.tokenizer
        chat, images = [], []
        for m in messages:
            content = m["content"]
            if isinstance(content, str):
                chat.append({"role": m["role"], "content": [{"type": "text", "text": content}]})
                continue
            parts = []
            for p in content:
                if p.get("type") == "image":
                    img = p["image"]
                    images.append(img.convert("RGB") if isinstance(img, Image.Image) else img)
                    parts.append({"type": "image"})
                else:
                    parts.append({"type": "text", "text": p.get("text", "")})
            chat.append({"role": m["role"], "content": parts})
        prompt = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[prompt], images=images or None, return_tensors="pt").to(loaded.model.device)
        gen = {"max_new_tokens": max_tokens, "do_sample": temperature > 0}
        if temperature > 0:
            gen["temperature"] = temperature
        out = loaded.model.generate(**inputs, **gen)
        n_in = int(inputs["input_ids"].shape[1])
        new = out[0, n_in:]
        text = processor.decode(new, skip_special_tokens=True)
        eos = loaded.model.generation_config.eos_token_id
        ended = len(new) > 0 and int(new[-1]) in (eos if isinstance(eos, list) else [eos])
        return text.strip(), n_in, int(new.shape[0]), len(new) >= max_tokens and not ended

    async def aclose(self) -> None:
        """Nothing to close: the shared model stays loaded for other roles and later runs."""
