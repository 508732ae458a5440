"""The roles of one run: put behind the run's safety net, and fingerprinted for its journal.

Kept out of :mod:`reallod.agent.roles` so that the workflow's own code never loads the response cache
or the retry machinery; only the commands that run it (realign, the data engine) do.
"""

from __future__ import annotations

from dataclasses import replace

from reallod.agent.roles import ROLE_NAMES, Roles
from reallod.llm.cache import ResponseCache
from reallod.llm.endpoints import Endpoints, harden_backends, model_id
from reallod.runs.journal import fingerprint


def harden(roles: Roles, *, cache: ResponseCache | None = None, endpoint_limit: int | None = None,
           seed: int | None = None, down_after: int = 8) -> tuple[Roles, Endpoints]:
    """The same roles behind the run's safety net (see :func:`reallod.llm.endpoints.harden_backends`):
    roles that share a backend keep sharing one wrapper."""
    present = {name: role for name in ROLE_NAMES if (role := roles.get(name)) is not None}
    backends, endpoints = harden_backends({n: r.backend for n, r in present.items()}, retry=roles.retry,
                                          cache=cache, endpoint_limit=endpoint_limit, seed=seed,
                                          down_after=down_after)
    new = {n: replace(r, backend=backends[n]) for n, r in present.items()}
    return Roles(**new, retry=roles.retry), endpoints


def _role_parts(roles: Roles) -> dict[str, dict[str, object]]:
    parts = {}
    for name in ROLE_NAMES:
        role = roles.get(name)
        if role is not None:
            parts[name] = {"model": model_id(role.backend), "system": role.prompt.system, "user": role.prompt.user,
                           "max_tokens": role.max_tokens, "temperature": role.temperature}
    return parts


def roles_fingerprint(roles: Roles) -> str:
    """What in the config changes results: per role the model (not its URL), sampling parameters,
    prompt text and token limit."""
    return fingerprint(_role_parts(roles))


def roles_settings(roles: Roles) -> dict[str, dict[str, object]]:
    """:func:`roles_fingerprint`'s parts as a journal keeps them to name what a changed config changed
    (``roles.rewriter.max_tokens``); prompts by a short digest of their text."""
    return {"roles": {name: {k: fingerprint(v)[:16] if k in ("system", "user") else v for k, v in part.items()}
                      for name, part in _role_parts(roles).items()}}
