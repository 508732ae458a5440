"""The in-process constrained decoder writes back what fine-tuning taught: a model that has learned a
teacher's reply token by token (``reply_ids``) gets that very reply from the decoder, empty answers
included, while a field with ``minLength`` is never left empty."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from reallod.agent.decisions import SPECS, DecisionError
from reallod.llm.backends.transformers_backend import (
    TransformersBackend,
    _Decoder,
    _Loaded,
    _token_classes,
    flat_schema_fields,
    prompt_ids,
    reply_ids,
)
from tests.finetune.tiny_models import bert_tokenizer

MESSAGES = [{"role": "user", "content": 'Category: dog\nExpression: "the brown dog on the left"'}]


class TeacherForcedLM(torch.nn.Module):
    """Test double for a perfectly fine-tuned student: at every position its logits put the next token
    of one fixed sequence first; its "cache" is the number of tokens seen."""

    def __init__(self, sequence: list[int], vocab: int) -> None:
        super().__init__()
        self.sequence, self.vocab, self.device = sequence, vocab, torch.device("cpu")

    def forward(self, input_ids: torch.Tensor, use_cache: bool, logits_to_keep: int = 0,
                cache: int | None = None) -> SimpleNamespace:
        seen, n = cache or 0, input_ids.shape[1]
        logits = torch.zeros(1, n, self.vocab)
        for j in range(n):
            if seen + j + 1 < len(self.sequence):
                logits[0, j, self.sequence[seen + j + 1]] = 30.0
        return SimpleNamespace(logits=logits[:, -(logits_to_keep or n):], cache=seen + n)


@pytest.fixture(scope="module")
def tok():  # type: ignore[no-untyped-def]
    return bert_tokenizer()


def decode_as_student(tok, reply: str, schema: dict, max_tokens: int = 64) -> str:  # type: ignore[no-untyped-def]
    """What the decoder writes for ``schema`` when the model has learned ``reply`` exactly."""
    return student_decoder(tok, reply, schema, max_tokens)[0]


def student_decoder(tok, reply: str, schema: dict, max_tokens: int) -> tuple[str, _Decoder]:  # type: ignore[no-untyped-def]
    prompt = prompt_ids(tok, MESSAGES)
    quotes, blanks = _token_classes(tok)
    model = TeacherForcedLM([*prompt, *reply_ids(tok, reply, schema), tok.eos_token_id], len(tok))
    loaded = _Loaded(model=model, tokenizer=tok, quote_ids=quotes, blank_ids=blanks)
    fields = flat_schema_fields(schema)
    assert fields is not None
    dec = _Decoder(loaded, prompt, temperature=0.0)
    return TransformersBackend._json(dec, fields, max_tokens=max_tokens), dec


@pytest.mark.parametrize(("role", "reply"), [
    ("reflector", {"missing": "", "feedback": "the dog is brown and on the left", "verdict": "correct"}),
    ("reflector", {"missing": "colour", "feedback": "the colour cannot be seen", "verdict": "uncertain"}),
    ("planner", {"reason": "the verdict was correct", "state": "correct", "focus": "object", "question": ""}),
    ("reflector", {"missing": "", "feedback": "", "verdict": "wrong"}),
    ("planner", {"reason": "the colour is unknown", "state": "uncertain", "focus": "object",
                 "question": "what colour is the dog"}),
])
def test_a_student_writes_back_the_teachers_reply_empty_answers_included(tok, role: str, reply: dict) -> None:
    text = json.dumps(reply)
    assert json.loads(decode_as_student(tok, text, SPECS[role].schema)) == reply
    SPECS[role].parse(text)


def test_a_field_with_min_length_is_never_empty(tok) -> None:
    schema = SPECS["rewriter"].schema
    assert schema["properties"]["expression"]["minLength"] == 1
    # the student would close the quote at once; the decoder makes it write a word first
    out = json.loads(decode_as_student(tok, json.dumps({"expression": ""}), schema))
    assert out["expression"].strip()


@pytest.mark.parametrize("role", sorted(SPECS))
def test_a_field_is_nonempty_exactly_where_the_parser_refuses_it_empty(role: str) -> None:
    """So every decision a teacher's reply parses to is one the decoder can write back."""
    spec = SPECS[role]
    fields = flat_schema_fields(spec.schema)
    assert fields is not None
    full = {f.key: (f.allowed[0] if f.allowed else "some words") for f in fields}
    for f in fields:
        if f.allowed is None:
            try:
                spec.parse(json.dumps({**full, f.key: ""}))
                refused = False
            except DecisionError:
                refused = True
            assert f.nonempty == refused, f"{role}.{f.key}"


def test_no_string_starts_with_a_token_that_writes_nothing(tok) -> None:
    """Special tokens are skipped when decoding: one first and a quote next would leave the string empty."""
    quotes, blanks = _token_classes(tok)
    assert set(tok.all_special_ids) <= blanks | quotes
    assert tok.convert_tokens_to_ids('"') in quotes and tok.convert_tokens_to_ids("dog") not in blanks | quotes


def test_fields_come_from_a_flat_schema_only() -> None:
    fields = {f.key: f for f in flat_schema_fields(SPECS["planner"].schema) or []}
    assert fields["state"].allowed == ["correct", "wrong", "uncertain"] and fields["state"].nonempty
    assert flat_schema_fields({"type": "object", "properties": {"n": {"type": "integer"}}}) is None


def test_a_string_stopped_by_the_token_limit_is_named_and_the_fields_after_it_are_written(tok) -> None:
    """The decoder closed a cut string without a word: ``{"expression": "the brown dog on"}`` passed for a
    whole expression. The field is named (``cut_fields``) for the workflow to refuse where its text is
    kept, and the fields after it are still written (a reflector's verdict after its cut feedback)."""
    whole = json.dumps({"expression": "the brown dog on the left of the red wooden bench"})
    text, dec = student_decoder(tok, whole, SPECS["rewriter"].schema, max_tokens=4)
    assert dec.cut_fields == ["expression"] and json.loads(text)["expression"].startswith("the brown")
    text, dec = student_decoder(tok, whole, SPECS["rewriter"].schema, max_tokens=64)
    assert dec.cut_fields == [] and json.loads(text) == json.loads(whole)
    reply = {"missing": "", "feedback": "the dog is brown and it is on the left of the bench", "verdict": "correct"}
    text, dec = student_decoder(tok, json.dumps(reply), SPECS["reflector"].schema, max_tokens=8)
    assert dec.cut_fields == ["feedback"] and json.loads(text)["verdict"] == "correct"
    plan = {"reason": "the colour of the dog cannot be told from the caption alone", "state": "uncertain",
            "focus": "object", "question": "what colour"}
    text, dec = student_decoder(tok, json.dumps(plan), SPECS["planner"].schema, max_tokens=16)
    assert dec.cut_fields == ["reason"] and "question" in json.loads(text)  # only the cut one is named
