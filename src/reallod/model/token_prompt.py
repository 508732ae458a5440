"""Expressions → token prompts for Grounding-DINO, with each expression's token positions.

The model splits a prompt into phrases at the token ids of ``.`` and ``?`` (and treats [CLS], [SEP]
and [PAD] as delimiters too), so an expression must not contain them: they are removed from the text
and, as a safety net, from the token ids. Every prompt ends its last phrase with ``.`` so that padding
a prompt in a batch does not change which tokens attend to each other.

Pure logic: the tokenizer is passed in as a function from text to token ids (no special tokens).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from reallod.errors import ConfigError, json_kind

# bert-base-uncased ids that Grounding-DINO hard-codes.
CLS_ID, SEP_ID, DOT_ID, QUESTION_ID, PAD_ID = 101, 102, 1012, 1029, 0
DELIMITER_IDS = frozenset({CLS_ID, SEP_ID, DOT_ID, QUESTION_ID, PAD_ID})
MAX_TEXT_LEN = 512  # BERT's position embeddings end here

LongPolicy = Literal["truncate", "error"]
_SPLIT = re.compile(r"[.?]")
_SPACES = re.compile(r"\s+")


def sanitize(expression: str) -> str:
    """The expression as it goes into a prompt: no ``.``/``?`` (phrase splitters), single spaces."""
    return _SPACES.sub(" ", _SPLIT.sub(" ", expression)).strip()


_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Mn"})


def tokenizer_kept(expression: str) -> str:
    """What the BERT (uncased) tokenizer's text clean-up leaves of the sanitised expression: control,
    format (zero-width), private-use and surrogate characters, NUL and U+FFFD dropped, accents stripped
    (NFD, combining marks dropped). Empty: the tokenizer gives the expression no tokens, so it cannot be
    prompted; checked without loading a tokenizer."""
    import unicodedata

    kept = "".join(c for c in unicodedata.normalize("NFD", sanitize(expression))
                   if c not in "\x00\ufffd" and unicodedata.category(c) not in _DROPPED_CATEGORIES)
    return _SPACES.sub(" ", kept).strip()


def check_expressions(expressions: Sequence[str]) -> list[str]:
    """Validate user expressions; an empty list or an expression with no words is an error."""
    if isinstance(expressions, str):
        raise ConfigError("expressions must be a list of strings, not one string")
    if not expressions:
        raise ConfigError("no expressions given: pass at least one text to look for")
    out = []
    for i, e in enumerate(expressions):
        if not isinstance(e, str):
            raise ConfigError(f"expression {i}: expected a string, got {json_kind(e)}")
        if not sanitize(e):
            raise ConfigError(f"expression {i} ({e!r}) is empty once '.' and '?' are removed")
        out.append(e)
    return out


@dataclass(frozen=True)
class Prompt:
    """One text input: token ids with [CLS]/[SEP], and where each expression's tokens sit."""

    input_ids: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]  # [start, end) token positions, one per expression
    expression_ids: tuple[int, ...]  # index into the caller's expression list, one per span


@dataclass
class PromptPlan:
    """All prompts for one set of expressions, plus the expressions that had to be shortened."""

    prompts: list[Prompt]
    truncated: list[int] = field(default_factory=list)


def tokenize_expressions(expressions: Sequence[str], tokenize: Callable[[str], list[int]]) -> list[list[int]]:
    """Token ids of each sanitised expression, delimiter ids removed (they would split the phrase)."""
    out = []
    for i, e in enumerate(expressions):
        ids = [t for t in tokenize(sanitize(e)) if t not in DELIMITER_IDS]
        if not ids:
            raise ConfigError(f"expression {i} ({e!r}) has no tokens once sanitised")
        out.append(ids)
    return out


def _fit(tokens: list[list[int]], budget: int, on_long: LongPolicy, expressions: Sequence[str] | None
         ) -> tuple[list[list[int]], list[int]]:
    fitted, truncated = [], []
    for i, ids in enumerate(tokens):
        if len(ids) > budget:
            name = repr(expressions[i][:60]) if expressions is not None else ""
            if on_long == "error":
                raise ConfigError(f"expression {i} {name} has {len(ids)} tokens; the text limit leaves room "
                                  f"for {budget} (raise max_text_len, up to {MAX_TEXT_LEN})")
            warnings.warn(f"expression {i} {name} has {len(ids)} tokens and was cut to {budget} "
                          f"to fit the text limit", stacklevel=3)
            truncated.append(i)
            ids = ids[:budget]
        fitted.append(ids)
    return fitted, truncated


def plan_parallel(tokens: list[list[int]], max_text_len: int, *, on_long: LongPolicy = "truncate",
                  expressions: Sequence[str] | None = None) -> PromptPlan:
    """One prompt per expression: ``[CLS] expr . [SEP]`` (the benchmarks' mode)."""
    _check_len(max_text_len)
    fitted, truncated = _fit(tokens, max_text_len - 3, on_long, expressions)
    prompts = [Prompt((CLS_ID, *ids, DOT_ID, SEP_ID), ((1, 1 + len(ids)),), (i,)) for i, ids in enumerate(fitted)]
    return PromptPlan(prompts, truncated)


def plan_concat(tokens: list[list[int]], max_text_len: int, *, on_long: LongPolicy = "truncate",
                expressions: Sequence[str] | None = None) -> PromptPlan:
    """Expressions joined as ``[CLS] a . b . c . [SEP]``, a new prompt whenever the budget is full."""
    _check_len(max_text_len)
    fitted, truncated = _fit(tokens, max_text_len - 3, on_long, expressions)
    prompts: list[Prompt] = []
    ids: list[int] = [CLS_ID]
    spans: list[tuple[int, int]] = []
    owners: list[int] = []
    for i, toks in enumerate(fitted):
        if spans and len(ids) + len(toks) + 2 > max_text_len:  # + '.' + [SEP]
            prompts.append(Prompt((*ids, SEP_ID), tuple(spans), tuple(owners)))
            ids, spans, owners = [CLS_ID], [], []
        spans.append((len(ids), len(ids) + len(toks)))
        owners.append(i)
        ids.extend(toks)
        ids.append(DOT_ID)
    if spans:
        prompts.append(Prompt((*ids, SEP_ID), tuple(spans), tuple(owners)))
    return PromptPlan(prompts, truncated)


def _check_len(max_text_len: int) -> None:
    if not 4 <= max_text_len <= MAX_TEXT_LEN:
        raise ConfigError(f"max_text_len must be between 4 and {MAX_TEXT_LEN}, not {max_text_len}")


def batch_ids(prompts: Sequence[Prompt]) -> tuple[list[list[int]], list[list[int]]]:
    """Right-padded input ids and attention masks for a batch of prompts."""
    width = max(len(p.input_ids) for p in prompts)
    ids = [list(p.input_ids) + [PAD_ID] * (width - len(p.input_ids)) for p in prompts]
    mask = [[1] * len(p.input_ids) + [0] * (width - len(p.input_ids)) for p in prompts]
    return ids, mask
