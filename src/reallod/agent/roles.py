"""A role is a backend, a prompt template and the decision it must return.

The workflow asks a role for a decision with a dict of values; the role renders its template into chat
messages (images as PIL images in content parts, which each backend converts). Templates are text
files with a ``[system]`` and a ``[user]`` section and ``$name`` placeholders; a template that uses a
placeholder its role does not provide is refused when it is loaded, not halfway through a run.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from PIL import Image

from reallod.agent.backends.base import Backend, Message
from reallod.agent.decisions import SPECS, DecisionSpec
from reallod.agent.retry import RetryPolicy
from reallod.errors import ConfigError

LLM_ROLES: tuple[str, ...] = ("reflector", "planner", "rewriter")
ROLE_NAMES: tuple[str, ...] = (*LLM_ROLES, "vlm")

PLACEHOLDERS: dict[str, frozenset[str]] = {
    "reflector": frozenset({"category", "caption", "evidence", "expression", "format"}),
    "planner": frozenset({"category", "expression", "verdict", "missing", "feedback", "format"}),
    "rewriter": frozenset({"category", "caption", "evidence", "expression", "feedback", "chosen_box",
                           "others", "image_size", "format"}),
    "vlm": frozenset({"category", "expression", "question", "view", "format"}),
}
"""The values the workflow provides to each role's template."""


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """One role's prompt: a system part and a user part with ``$name`` placeholders."""

    name: str
    system: str
    user: str

    @classmethod
    def parse(cls, name: str, text: str, *, role: str | None = None) -> PromptTemplate:
        """Split a template file into its sections and check its placeholders against ``role``."""
        sections: dict[str, list[str]] = {}
        current: list[str] | None = None
        for line in text.splitlines():
            tag = line.strip()
            if tag in ("[system]", "[user]"):
                current = sections.setdefault(tag[1:-1], [])
            elif current is not None:
                current.append(line)
        if "user" not in sections:
            raise ConfigError(f"prompt {name}: no [user] section")
        template = cls(name, "\n".join(sections.get("system", [])).strip(),
                       "\n".join(sections["user"]).strip())
        if role is not None:
            unknown = template.placeholders() - PLACEHOLDERS[role]
            if unknown:
                raise ConfigError(f"prompt {name}: unknown placeholder(s) {', '.join(sorted(unknown))} "
                                  f"for role {role}; available: {', '.join(sorted(PLACEHOLDERS[role]))}")
        return template

    @classmethod
    def load(cls, role: str, path: str | Path | None = None) -> PromptTemplate:
        """The packaged template of ``role``, or a user's template file at ``path``."""
        if path is None:
            text = files("reallod.agent").joinpath("prompts", f"{role}.txt").read_text(encoding="utf-8")
            return cls.parse(f"{role}.txt", text, role=role)
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"prompt {p}: cannot read: {e.strerror or e}") from e
        return cls.parse(str(p), text, role=role)

    def placeholders(self) -> set[str]:
        found: set[str] = set()
        for part in (self.system, self.user):
            for _, named, braced, _ in string.Template.pattern.findall(part):
                if named or braced:
                    found.add(named or braced)
        return found

    def render(self, values: dict[str, Any], images: list[Image.Image] | None = None) -> list[Message]:
        """Chat messages for these values; images go first in the user turn."""
        text = {k: "" if v is None else str(v) for k, v in values.items()}
        messages: list[Message] = []
        if self.system:
            messages.append({"role": "system", "content": string.Template(self.system).safe_substitute(text)})
        user = string.Template(self.user).safe_substitute(text)
        if images:
            parts: list[dict[str, Any]] = [{"type": "image", "image": im} for im in images]
            parts.append({"type": "text", "text": user})
            messages.append({"role": "user", "content": parts})
        else:
            messages.append({"role": "user", "content": user})
        return messages


@dataclass(slots=True)
class Role:
    """A backend asked with one template for one kind of decision."""

    name: str
    backend: Backend
    prompt: PromptTemplate
    decision: DecisionSpec
    max_tokens: int | None = None
    temperature: float | None = None

    def messages(self, values: dict[str, Any], images: list[Image.Image] | None = None) -> list[Message]:
        return self.prompt.render({"format": self.decision.format_hint(), **values}, images)


def make_role(name: str, backend: Backend, *, prompt: PromptTemplate | None = None,
              max_tokens: int | None = None, temperature: float | None = None) -> Role:
    """A role with the packaged prompt and decision of ``name`` unless a prompt is given."""
    if name not in ROLE_NAMES:
        raise ConfigError(f"unknown role {name!r}; roles are {', '.join(ROLE_NAMES)}")
    return Role(name, backend, prompt or PromptTemplate.load(name), SPECS[name], max_tokens, temperature)


@dataclass(slots=True)
class Roles:
    """Everything the workflow calls. ``vlm`` is None when no vision model is configured."""

    reflector: Role
    planner: Role
    rewriter: Role
    vlm: Role | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def get(self, name: str) -> Role | None:
        return getattr(self, name)

    def describe(self) -> dict[str, str | None]:
        """Role → backend name, for run summaries."""
        return {n: (r.backend.name if (r := self.get(n)) else None) for n in ROLE_NAMES}

    async def aclose(self) -> None:
        """Close each distinct backend once (roles often share one)."""
        seen: set[int] = set()
        for n in ROLE_NAMES:
            role = self.get(n)
            if role is not None and id(role.backend) not in seen:
                seen.add(id(role.backend))
                await role.backend.aclose()
