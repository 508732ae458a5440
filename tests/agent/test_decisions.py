"""Parsing replies into decisions: JSON, fences, prose, repair, synonyms, case, refusals."""

from __future__ import annotations

import pytest

from reallod.agent.decisions import (
    FOCI,
    PLAN_STATES,
    REFLECT_VERDICTS,
    SPECS,
    DecisionError,
)
from reallod.agent.roles import PLACEHOLDERS, ROLE_NAMES, load_prompt
from reallod.errors import ConfigError
from reallod.llm.prompts import PromptTemplate
from reallod.llm.replies import parse_json_object


def test_exact_json() -> None:
    d, repaired = SPECS["reflector"].parse('{"missing": "", "feedback": "fine", "verdict": "correct"}')
    assert d == {"verdict": "correct", "missing": "", "feedback": "fine"} and not repaired


def test_json_in_a_code_fence_or_in_prose() -> None:
    fenced = 'Sure!\n```json\n{"verdict": "wrong", "feedback": "it is a cat"}\n```\nDone.'
    assert SPECS["reflector"].parse(fenced)[0]["verdict"] == "wrong"
    prose = 'My judgement: {"verdict": "uncertain", "missing": "colour"} as requested.'
    d, repaired = SPECS["reflector"].parse(prose)
    assert d["verdict"] == "uncertain" and d["missing"] == "colour" and not repaired


@pytest.mark.parametrize("broken", [
    '{"verdict": "wrong", "feedback": "it is a cat"',  # truncated
    "{'verdict': 'wrong', 'feedback': 'it is a cat'}",  # single quotes
    '{"verdict": "wrong", "feedback": "it is a cat",}',  # trailing comma
    '{verdict: "wrong", feedback: "it is a cat"}',  # bare keys
])
def test_broken_json_is_repaired(broken: str) -> None:
    d, repaired = SPECS["reflector"].parse(broken)
    assert d["verdict"] == "wrong" and repaired


@pytest.mark.parametrize("reply", ["", "I think it is correct.", "[1, 2, 3]", "{}", "null"])
def test_replies_without_an_object_are_refused(reply: str) -> None:
    with pytest.raises(DecisionError):
        SPECS["reflector"].parse(reply)


def test_vlm_plain_text_is_taken_as_the_answer() -> None:
    d, repaired = SPECS["vlm"].parse("  The dog is brown\nand sits on a sofa. ")
    assert d == {"answer": "The dog is brown and sits on a sofa."} and repaired
    with pytest.raises(DecisionError):
        SPECS["vlm"].parse("   ")


@pytest.mark.parametrize(("raw", "value"), [
    ("Correct", "correct"), (" WRONG ", "wrong"), ("incorrect", "wrong"), ("Uncertain.", "uncertain"),
    ("unsure", "uncertain")])
def test_verdicts_match_case_insensitively_with_synonyms(raw: str, value: str) -> None:
    assert SPECS["reflector"].parse(f'{{"verdict": "{raw}"}}')[0]["verdict"] == value


@pytest.mark.parametrize(("raw", "value"), [
    ("Object", "object"), ("colour", "object"), ("relation", "surroundings"),
    ("Surroundings", "surroundings"), ("whole scene", "position"), ("location", "position")])
def test_focus_synonyms(raw: str, value: str) -> None:
    d, _ = SPECS["planner"].parse(f'{{"state": "uncertain", "focus": "{raw}", "question": "Is it Red?"}}')
    assert d["focus"] == value and d["question"] == "Is it Red?"


@pytest.mark.parametrize(("reply", "message"), [
    ('{"verdict": "maybe"}', 'not one of: correct, uncertain, wrong'),
    ('{"feedback": "x"}', '"verdict" is missing'),
])
def test_unknown_or_missing_verdict_is_refused_with_a_usable_message(reply: str, message: str) -> None:
    with pytest.raises(DecisionError, match=message):
        SPECS["reflector"].parse(reply)


def test_planner_refusals() -> None:
    with pytest.raises(DecisionError, match="needs \"focus\""):
        SPECS["planner"].parse('{"state": "uncertain", "focus": ""}')
    with pytest.raises(DecisionError, match="not one of: object, surroundings, position"):
        SPECS["planner"].parse('{"state": "uncertain", "focus": "telescope"}')
    with pytest.raises(DecisionError, match='"state" is "zoom"'):
        SPECS["planner"].parse('{"state": "zoom"}')
    # A focus is irrelevant unless uncertain, and is not held against the planner.
    assert SPECS["planner"].parse('{"state": "wrong", "focus": "telescope"}')[0]["focus"] == "none"


def test_rewrites_keep_their_case_and_lose_only_wrapping_quotes() -> None:
    d, _ = SPECS["rewriter"].parse('{"expression": "  \\"the Eiffel Tower behind the  NASA van\\" "}')
    assert d == {"expression": "the Eiffel Tower behind the NASA van"}
    for empty in ('{"expression": ""}', '{"expression": "  \\"\\" "}', '{"text": "a dog"}'):
        with pytest.raises(DecisionError):
            SPECS["rewriter"].parse(empty)


def test_schemas_match_what_the_parsers_accept() -> None:
    assert SPECS["reflector"].schema["properties"]["verdict"]["enum"] == list(REFLECT_VERDICTS)
    assert SPECS["planner"].schema["properties"]["state"]["enum"] == list(PLAN_STATES)
    assert SPECS["planner"].schema["properties"]["focus"]["enum"] == list(FOCI)
    for spec in SPECS.values():
        schema = spec.schema
        assert schema["type"] == "object" and schema["required"] == list(schema["properties"])
        assert schema["additionalProperties"] is False
        hint = spec.format_hint()
        assert all(f'"{k}"' in hint for k in schema["properties"])


def test_parse_json_object_prefers_the_fenced_object() -> None:
    obj, repaired = parse_json_object('{"a": 1} and ```json\n{"b": 2}\n```')
    assert obj == {"b": 2} and not repaired


def test_packaged_prompts_load_and_use_only_known_placeholders() -> None:
    for role in ROLE_NAMES:
        t = load_prompt(role)
        assert t.system and t.user
        assert t.placeholders() <= PLACEHOLDERS[role]
        assert "format" in t.placeholders()


def test_a_prompt_with_an_unknown_placeholder_is_refused(tmp_path) -> None:
    p = tmp_path / "mine.txt"
    p.write_text("[system]\nYou judge.\n[user]\nJudge $expression against $weather.\n")
    with pytest.raises(ConfigError, match=r"unknown placeholder\(s\) weather"):
        load_prompt("reflector", p)
    p.write_text("no sections at all $expression")
    with pytest.raises(ConfigError, match="no \\[user\\] section"):
        load_prompt("reflector", p)


def test_prompt_values_are_substituted_verbatim() -> None:
    t = PromptTemplate.parse("x", "[user]\nSay $expression costs $$5 {not a field}",
                             allowed=PLACEHOLDERS["reflector"], role="reflector")
    msgs = t.render({"expression": "the Red $cup"})
    assert msgs == [{"role": "user", "content": "Say the Red $cup costs $5 {not a field}"}]


@pytest.mark.parametrize("value", ['{"text": "the red cup", "confidence": 0.9}', "42", "3.5", "true", "false",
                                   '["the red cup"]'])
@pytest.mark.parametrize(("role", "reply"), [
    ("rewriter", '{"expression": %s}'),
    ("vlm", '{"answer": %s}'),
    ("planner", '{"state": "uncertain", "focus": "object", "question": %s, "reason": "r"}'),
    ("planner", '{"state": "wrong", "focus": "object", "question": "", "reason": %s}'),
    ("planner", '{"state": %s, "focus": "object", "question": ""}'),
    ("reflector", '{"verdict": "wrong", "missing": "", "feedback": %s}'),
    ("reflector", '{"verdict": "wrong", "missing": %s, "feedback": "f"}'),
    ("reflector", '{"verdict": %s}'),
])
def test_a_text_field_of_another_json_type_is_refused_not_written_as_repr(role: str, reply: str, value: str) -> None:
    """Every field's schema type is string: an object, number, boolean or list is re-asked, never
    turned into Python's repr ("{'text': 'the red cup', ...}", "42", "True") in the output."""
    with pytest.raises(DecisionError, match="must be a JSON string"):
        SPECS[role].parse(reply % value)


def test_a_refused_type_is_named_for_the_retry() -> None:
    with pytest.raises(DecisionError, match=r'"expression" is an object; it must be a JSON string'):
        SPECS["rewriter"].parse('{"expression": {"text": "the red cup"}}')
    with pytest.raises(DecisionError, match=r'"answer" is the number 3; it must be a JSON string'):
        SPECS["vlm"].parse('{"answer": 3}')
    with pytest.raises(DecisionError, match=r'"verdict" is the JSON literal true'):
        SPECS["reflector"].parse('{"verdict": true}')
    # a plain-text VLM reply (no JSON object) is still its answer, a number too
    assert SPECS["vlm"].parse("3")[0] == {"answer": "3"}
