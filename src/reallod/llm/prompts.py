"""Prompt templates: text files with a ``[system]`` and a ``[user]`` section and ``$name`` placeholders,
rendered into chat messages (images as PIL images in content parts, which each backend converts).

A caller that knows which values it will provide passes them as ``allowed``, so a template that uses
any other placeholder is refused when it is loaded, not halfway through a run.
"""

from __future__ import annotations

import string
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from reallod.errors import ConfigError, not_utf8
from reallod.llm.backends.base import Message


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    """One role's prompt: a system part and a user part with ``$name`` placeholders."""

    name: str
    system: str
    user: str

    @classmethod
    def parse(cls, name: str, text: str, *, allowed: Collection[str] | None = None,
              role: str | None = None) -> PromptTemplate:
        """Split a template file into its sections; with ``allowed``, refuse any other placeholder
        (``role`` names whose values those are, for the message)."""
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
        if allowed is not None:
            unknown = template.placeholders() - set(allowed)
            if unknown:
                whose = f" for role {role}" if role else ""
                raise ConfigError(f"prompt {name}: unknown placeholder(s) {', '.join(sorted(unknown))}"
                                  f"{whose}; available: {', '.join(sorted(allowed))}")
        return template

    @classmethod
    def read(cls, path: str | Path, *, allowed: Collection[str] | None = None,
             role: str | None = None) -> PromptTemplate:
        """A template file (see :meth:`parse`)."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"prompt {p}: cannot read: {e.strerror or e}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"prompt {p}{f' of role {role}' if role else ''}: {not_utf8(e)}") from None
        return cls.parse(str(p), text, allowed=allowed, role=role)

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
