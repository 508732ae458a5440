"""Replies a generation step cannot use — no text (a llama.cpp server without a chat format answers
``content: null``), JSON that cannot be read, a list cut at the token limit — fail their image as a failed
call does: the image is not journaled, the reply is dropped from the response cache, and the summary
says why. An answer that says there is nothing (a JSON object without phrases) is the model's answer."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from reallod.engine.phrases import Unusable, parse_list, read_list, read_text
from reallod.engine.pipeline import GenerateOptions, GenerationFailed, check_generated, generate
from reallod.llm.backends.base import Completion
from reallod.llm.policy import RetryPolicy
from tests.agent.scripted import scripted_roles
from tests.engine.scripted_models import DEFAULTS, generation_answers

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STEPS = ("caption", "vlm_short", "vlm_long", "llm", "group", "hard_negative")


def options(out: Path, **kw) -> GenerateOptions:
    return GenerateOptions(EXAMPLES / "annotations.json", EXAMPLES / "images", "offline", out, **kw)


def reply(text: str, finish: str | None = "stop") -> Completion:
    return Completion(text, meta={"finish_reason": finish})


@pytest.mark.parametrize(("text", "phrases"), [
    ('{"expression_1": "a cat", "expression_2": ""}', ["a cat", ""]),
    ("{}", []), ("[]", []), ('{"expressions": []}', []),  # the model says there is nothing
    ('["a cat", "the cat"]', ["a cat", "the cat"]),
    ("a cat\n\nthe cat on the left", ["a cat", "the cat on the left"]),  # a model that ignores the format
])
def test_a_list_reply_that_parses_gives_its_phrases_even_none(text: str, phrases: list[str]) -> None:
    assert parse_list(text) == phrases
    assert read_list(reply(text), 96) == phrases


@pytest.mark.parametrize(("text", "why"), [
    ("", "empty reply"), ("  \n", "empty reply"),
    ("{", "not the JSON object asked for"), ('["a cat", "the', "not the JSON object asked for"),
])
def test_a_list_reply_without_text_or_readable_json_is_unusable(text: str, why: str) -> None:
    with pytest.raises(Unusable, match=why):
        read_list(reply(text), 96)


def test_a_list_reply_cut_at_the_token_limit_is_unusable_unless_it_is_whole() -> None:
    cut = '{"expression_1": "the item on the left", "expression_2": "the item standing next to the wood'
    with pytest.raises(Unusable, match=r"cut at the token limit \(max_tokens 96\) and needed repair: raise "
                                       r"max_tokens of the config's rewriter role above 96"):
        read_list(reply(cut, "length"), 96)
    with pytest.raises(Unusable, match=r"cut at the token limit .* does not parse"):
        read_list(reply("1. the cat on the", "length"), 96)
    with pytest.raises(Unusable, match=r"empty and was cut at the token limit \(max_tokens 96\): a reasoning model "
                                       r"may have spent it all on reasoning"):  # nothing written: no phrase was cut
        read_list(reply("", "length"), 96)
    assert read_list(reply(cut, "stop"), 96)[-1] == "the item standing next to the wood"  # repaired, not cut
    assert read_list(reply('{"expression_1": "a cat"}', "length"), 96) == ["a cat"]  # whole: it fit


def test_a_free_text_reply_without_text_is_unusable_and_an_empty_phrase_is_an_answer() -> None:
    with pytest.raises(Unusable, match="empty reply"):
        read_text(reply(" \n"), 64)
    assert read_text(reply('""'), 64) == '""'  # dropped later as an empty phrase, counted


def test_empty_replies_fail_the_image_and_a_rerun_asks_again(tmp_path: Path) -> None:
    """The auditor's llama.cpp case: every reply empty. Before, each image was journaled as done with no
    expressions and the empty replies cached, so neither a rerun nor a fresh journal generated anything."""
    empty = generation_answers({step: (lambda cat, t: "") for step in STEPS})
    cache = tmp_path / "cache.sqlite"
    run = generate(options(tmp_path / "g.jsonl", limit=2, cache=cache), roles=scripted_roles(empty))
    assert run.failed == 2 and run.ran == 0 and run.records == 0
    assert set(run.failures) == {"unusable_answer"}
    assert run.failures["unusable_answer"][1].startswith("caption: scripted:vlm: empty reply")
    with pytest.raises(GenerationFailed, match=r"2 image\(s\) not generated .*the model's replies could not be "
                                               r"used \(unusable_answer \d+ call\(s\), e\.g\. caption: .*empty reply"):
        check_generated(run)
    log: list[str] = []  # the server is fixed: the same command generates both images, asking the model
    again = generate(options(tmp_path / "g.jsonl", limit=2, cache=cache),
                     roles=scripted_roles(generation_answers(log=log)))
    assert again.failed == 0 and again.ran == 2 and again.resumed == 0 and again.records == 2
    assert log.count("caption") == 2 and log.count("llm") > 0


def test_only_the_unusable_reply_is_dropped_from_the_cache(tmp_path: Path) -> None:
    """The image's other replies are replayed by the rerun; the one that failed it is asked again."""
    def llm(cat: str, t: str) -> str:
        return "" if cat == "cup" else DEFAULTS["llm"](cat, t)

    cache = tmp_path / "cache.sqlite"
    first = generate(options(tmp_path / "g.jsonl", limit=2, cache=cache),
                     roles=scripted_roles(generation_answers({"llm": llm})))
    assert first.failed == 1 and first.failed_images == ["coffee.jpg"]  # the cup is on the second image
    assert first.failures["unusable_answer"][0] == 1
    log: list[str] = []
    again = generate(options(tmp_path / "g.jsonl", limit=2, cache=cache),
                     roles=scripted_roles(generation_answers(log=log)))
    assert again.failed == 0 and again.ran == 1 and again.resumed == 1
    # the cup's phrases are asked for again (and its hard negatives, whose prompt lists them); every other
    # reply of coffee.jpg came from the cache
    assert log == ["llm", "hard_negative"]


def test_a_list_cut_at_the_token_limit_fails_its_image_and_the_rewriters_max_tokens_raises_it(tmp_path):
    """The auditor's case: "the item standing next to the wood", cut from "...wooden table", was kept."""
    cut = '{"expression_1": "the item on the left", "expression_2": "the item standing next to the wood'
    asked: list[int | None] = []

    def llm(cat: str, t: str) -> Completion:
        return Completion(cut, meta={"finish_reason": "length"})

    roles = scripted_roles(generation_answers({"llm": llm}))
    run = generate(options(tmp_path / "g.jsonl", limit=1, no_cache=True), roles=roles)
    assert run.failed == 1 and run.records == 0
    assert "cut at the token limit (max_tokens 96)" in run.failure_line()
    asked += [c.max_tokens for c in roles.rewriter.backend.calls if c.role == "rewriter"]
    assert set(asked) == {96}
    # raised in the config: the LLM steps ask for as much (a lower one, as the offline config's 20, does not
    # lower theirs)
    for max_tokens, expected in ((200, 200), (20, 96)):
        roles = scripted_roles(generation_answers())
        roles = replace(roles, rewriter=replace(roles.rewriter, max_tokens=max_tokens))
        run = generate(options(tmp_path / f"g{max_tokens}.jsonl", limit=1, no_cache=True), roles=roles)
        assert run.failed == 0 and run.records == 1
        assert {c.max_tokens for c in roles.rewriter.backend.calls if c.role == "rewriter"} == {expected}


def test_a_json_object_without_phrases_is_the_models_answer_not_a_failure(tmp_path: Path) -> None:
    nothing = {"llm": lambda cat, t: "{}", "hard_negative": lambda cat, t: json.dumps({"expression_1": ""})}
    run = generate(options(tmp_path / "g.jsonl", limit=1, no_cache=True),
                   roles=scripted_roles(generation_answers(nothing)))
    assert run.failed == 0 and run.ran == 1 and run.records == 1
    assert run.counts["hard_negative: empty:dropped"] > 0


@pytest.mark.parametrize(("text", "phrases"), [
    ('{"reasoning": "it is on the left", "expression_2": "the cat", "expression_1": "a cat"}', ["a cat", "the cat"]),
    ('{"expression_10": "j", "expression_2": "b", "expression_1": "a"}', ["a", "b", "j"]),  # in their order
    ('{"note": "two", "expressions": ["a cat", "the cat"]}', ["a cat", "the cat"]),
])
def test_only_the_phrase_fields_of_a_reply_object_are_phrases(text: str, phrases: list[str]) -> None:
    """The auditor's case: a server answering ``{"error": "unknown role"}`` made "unknown role" a positive
    of every object. Only the fields the list schema asks for (or an ``expressions`` list) are phrases."""
    assert parse_list(text) == phrases
    assert read_list(reply(text), 96) == phrases


@pytest.mark.parametrize("text", ['{"error": "model overloaded"}', '{"note": "I cannot see any relation"}'])
def test_a_reply_object_of_other_fields_alone_is_unusable(text: str) -> None:
    """``{}`` is the model's answer of nothing; an object of other fields alone is no answer at all."""
    with pytest.raises(Unusable, match="without the expression_N fields asked for"):
        parse_list(text)


def test_a_reply_object_without_phrase_fields_fails_its_image_and_adds_no_expression(tmp_path: Path) -> None:
    """A server answering ``{"error": "unknown role"}`` put "unknown role" among the positives of every object;
    the image now fails (its rerun asks again), and nothing of the reply is written."""
    error = {step: (lambda cat, t: json.dumps({"error": "unknown role"})) for step in ("llm", "group", "hard_negative")}
    run = generate(options(tmp_path / "g.jsonl", limit=1, no_cache=True),
                   roles=scripted_roles(generation_answers(error)))
    assert run.failed == 1 and set(run.failures) == {"unusable_answer"}
    assert "unknown role" not in (tmp_path / "g.jsonl").read_text()


def test_a_vlm_expression_cut_at_the_token_limit_is_dropped_and_counted(tmp_path: Path) -> None:
    """"the cup standing on the" was written as the object's vlm_short expression: a reply the server
    stopped at max_tokens is no expression (the image is not failed: its other steps are fine)."""
    cut = {"vlm_short": lambda cat, t: Completion(f"the {cat} standing on the", meta={"finish_reason": "length"})}
    run = generate(options(tmp_path / "g.jsonl", limit=1, no_cache=True),
                   roles=scripted_roles(generation_answers(cut)))
    assert run.failed == 0 and run.records == 1
    assert run.counts["vlm_short: cut at the token limit:dropped"] > 0
    out = (tmp_path / "g.jsonl").read_text()
    assert "standing on the" not in out and "stands out clearly" in out  # vlm_long is kept


def test_a_phrase_an_in_process_decoder_closed_at_the_limit_is_dropped_and_counted(tmp_path: Path) -> None:
    """The decoder closes a phrase at its share of max_tokens and names it (``cut_fields``): the whole
    phrases of the reply are kept, the cut one is not."""
    def llm(cat: str, t: str) -> Completion:
        text = json.dumps({"expression_1": f"the {cat} on the left", "expression_2": f"the {cat} next to the"})
        return Completion(text, meta={"finish_reason": "length", "cut_fields": ["expression_2"]})

    run = generate(options(tmp_path / "g.jsonl", limit=1, no_cache=True),
                   roles=scripted_roles(generation_answers({"llm": llm})))
    assert run.failed == 0 and run.counts["llm: cut at the token limit:dropped"] > 0
    out = (tmp_path / "g.jsonl").read_text()
    assert "on the left" in out and "next to the\"" not in out


def test_an_unusable_reply_is_asked_again_in_the_same_run_with_its_reason(tmp_path: Path) -> None:
    """The config's ``retry.max_attempts`` counts unusable replies too, as realign does: a reply without
    text is asked again in the same conversation (the roles alternate, as chat templates require), so
    the image is generated by this run, not failed for the rerun."""
    def llm(cat: str, t: str) -> str:
        return DEFAULTS["llm"](cat, t) if "cannot be used" in t else ""

    roles = scripted_roles(generation_answers({"llm": llm}))
    run = generate(options(tmp_path / "g.jsonl", limit=1, no_cache=True), roles=roles)
    assert run.failed == 0 and run.records == 1 and not run.failures
    asked = [c.messages for c in roles.rewriter.backend.calls if "Chosen object:" in str(c.messages[1]["content"])]
    again = [m for m in asked if len(m) > 2]
    assert len(again) == len(asked) // 2 == run.counts["llm: unusable reply:asked again"] > 0
    assert [m["role"] for m in again[0]] == ["system", "user", "assistant", "user"] and again[0][2]["content"] == ""
    assert again[0][3]["content"] == ('That answer cannot be used: it was empty. Reply with one JSON object: '
                                      '{"expression_1": "...", "expression_2": "...", "expression_3": "..."}')
    assert " on the left" in (tmp_path / "g.jsonl").read_text()  # the llm phrases of the second reply


def test_a_cut_reply_asked_again_tells_the_model_to_be_shorter_not_the_users_fix(tmp_path: Path) -> None:
    cut = '{"expression_1": "the item on the left", "expression_2": "the item standing next to the wood'

    def llm(cat: str, t: str) -> Completion:
        if "cannot be used" in t:
            return Completion(DEFAULTS["llm"](cat, t), meta={"finish_reason": "stop"})
        return Completion(cut, meta={"finish_reason": "length"})

    roles = scripted_roles(generation_answers({"llm": llm}))
    run = generate(options(tmp_path / "g.jsonl", limit=1, no_cache=True), roles=roles)
    assert run.failed == 0 and run.records == 1
    told = [c.messages[-1]["content"] for c in roles.rewriter.backend.calls if len(c.messages) > 2]
    assert told and all(m.startswith("That answer cannot be used: it was too long and was cut off; write "
                                     "shorter phrases. Reply with one JSON object") for m in told)
    assert "standing next to the wood" not in (tmp_path / "g.jsonl").read_text()


@pytest.mark.parametrize(("max_attempts", "calls"), [(1, 1), (2, 2), (4, 4)])
def test_the_configs_max_attempts_bounds_the_replies_asked_for(tmp_path: Path, max_attempts: int, calls: int) -> None:
    """A model that keeps answering nothing fails its image after ``retry.max_attempts`` replies, each of
    them dropped from the response cache (the rerun asks again from the first)."""
    roles = scripted_roles(generation_answers({"caption": lambda cat, t: ""}),
                           retry=RetryPolicy(max_attempts=max_attempts, base_delay_s=0.0))
    cache = tmp_path / "cache.sqlite"
    run = generate(options(tmp_path / "g.jsonl", limit=1, cache=cache), roles=roles)
    assert run.failed == 1 and run.failures["unusable_answer"][0] == 1
    assert sum(c.role == "vlm" and "Describe this image" in str(c.messages) for c in roles.vlm.backend.calls) == calls
    log: list[str] = []
    again = generate(options(tmp_path / "g.jsonl", limit=1, cache=cache),
                     roles=scripted_roles(generation_answers(log=log)))
    assert again.ran == 1 and log.count("caption") == 1
