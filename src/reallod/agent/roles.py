"""A role is a backend, a prompt template and the decision it must return.

The workflow asks a role for a decision with a dict of values; the role renders its template
(:class:`~reallod.llm.prompts.PromptTemplate`) into chat messages. A template that uses a placeholder
its role does not provide is refused when it is loaded, not halfway through a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from PIL import Image

from reallod.agent.decisions import SPECS, DecisionSpec
from reallod.errors import ConfigError
from reallod.llm.backends.base import Backend, Message
from reallod.llm.policy import RetryPolicy
from reallod.llm.prompts import PromptTemplate

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


def load_prompt(role: str, path: str | Path | None = None) -> PromptTemplate:
    """The packaged template of ``role``, or a user's template file at ``path``; either is checked
    against the placeholders the workflow provides to that role."""
    allowed = PLACEHOLDERS[role]
    if path is None:
        text = files("reallod.agent").joinpath("prompts", f"{role}.txt").read_text(encoding="utf-8")
        return PromptTemplate.parse(f"{role}.txt", text, allowed=allowed, role=role)
    return PromptTemplate.read(path, allowed=allowed, role=role)


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
        return render_messages(self.prompt, self.decision, values, images)


def render_messages(prompt: PromptTemplate, decision: DecisionSpec, values: dict[str, Any],
                    images: list[Image.Image] | None = None) -> list[Message]:
    """The chat messages a role with this template and decision sends for ``values`` (what the workflow
    provides, recorded per call in the trace): the one rendering the workflow and the fine-tuning data
    (:mod:`reallod.finetune.sft_data`) share, so a student is trained on exactly what it is later asked."""
    return prompt.render({"format": decision.format_hint(), **values}, images)


def make_role(name: str, backend: Backend, *, prompt: PromptTemplate | None = None,
              max_tokens: int | None = None, temperature: float | None = None) -> Role:
    """A role with the packaged prompt and decision of ``name`` unless a prompt is given."""
    if name not in ROLE_NAMES:
        raise ConfigError(f"unknown role {name!r}; roles are {', '.join(ROLE_NAMES)}")
    return Role(name, backend, prompt or load_prompt(name), SPECS[name], max_tokens, temperature)


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
