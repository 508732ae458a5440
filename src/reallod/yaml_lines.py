"""A YAML config file read with the line that sets each key, so that an error can say ``FILE:LINE: key``.

Training and agent configs are read this way. A key given twice in one mapping is refused: PyYAML keeps
the last one, and the first one's settings (with everything under it) would be lost without a word.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from reallod.errors import ConfigError, not_utf8

Sources = dict[str, str]  # dotted key -> where its value was set: "FILE:LINE", or "--cfg-options KEY=VALUE"


def join_key(where: str, key: str) -> str:
    """``where.key``, or ``key`` at the top level."""
    return f"{where}.{key}" if where else key


def read_yaml_lines(path: Path) -> tuple[Any, Sources]:
    """The file's YAML document (None when empty) and the line of each key (``a.b``, list items ``a.0``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: {not_utf8(e)}") from None
    sources: Sources = {}
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, sources
        _key_lines(node, "", path, sources, set())
        return loader.construct_document(node), sources
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    finally:
        loader.dispose()


def _key_lines(node: yaml.Node, where: str, path: Path, sources: Sources, seen: set[int]) -> None:
    if id(node) in seen:  # an alias: its keys are recorded where the anchor is
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # <<: *anchor
                continue
            key, line = join_key(where, str(key_node.value)), key_node.start_mark.line + 1
            if key in first:
                raise ConfigError(f"{path}:{line}: {key}: duplicate key (first at line {first[key]}); YAML keeps "
                                  "only the last one, and the first one's settings would be lost: merge the two")
            first[key] = line
            sources[key] = f"{path}:{line}"
            _key_lines(value_node, key, path, sources, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sources[f"{where}.{i}"] = f"{path}:{item.start_mark.line + 1}"
            _key_lines(item, f"{where}.{i}", path, sources, seen)


def where_set(sources: Sources, key: str, fallback: str | Path | None = None) -> str | None:
    """Where ``key``'s value was set: its own entry, or that of the nearest enclosing key; else ``fallback``."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        if (found := sources.get(".".join(parts[:n]))) is not None:
            return found
    return None if fallback is None else str(fallback)
