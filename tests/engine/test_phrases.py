"""How replies of real models become phrases (:mod:`reallod.engine.phrases`).

The auditor's cases: Llama-3, Qwen2.5 and VLMs such as LLaVA or Qwen2-VL answer with a preamble ("Here is a
short phrase that refers to the person:"), an acknowledgement ("Sure!"), markdown and labels; a reasoning
model served without a reasoning parser writes its ``<think>`` block into the reply; the list steps fall back
to free text where a server rejects ``response_format``. Each of these became a junk expression (the
preamble) or lost the real one. Next to them, the replies that must keep their phrases as they were."""

from collections import Counter

import pytest

from reallod.engine.phrases import Unusable, clean, parse_list, read_list, read_phrase, read_text
from reallod.engine.text import accept
from reallod.llm.backends.base import Completion

CLEAN = [  # a free-text reply (vlm_short, vlm_long) or one listed item → its phrase
    ("Here is a short phrase that refers to the person:\nthe person on the left", "the person on the left"),
    ("Sure!\nthe cat on the sofa", "the cat on the sofa"),
    ("Certainly.\n\nthe cat on the sofa", "the cat on the sofa"),
    ("Here's a short phrase for the cat.\nthe cat on the sofa", "the cat on the sofa"),
    ("Sure, here's a short phrase: *the cat on the left*.", "the cat on the left"),
    ("**the black cat**", "the black cat"),
    ("__the black cat__", "the black cat"),
    ("*the black cat*", "the black cat"),
    ("**Expression 1:** the cat", "the cat"),
    ("**Expression 1**: the cat", "the cat"),
    ('"the cat",', "the cat"),
    ('"the grey cat on the sofa".', "the grey cat on the sofa"),
    ('“the cat.”', "the cat"),
    ('Here is a short phrase: "the black cat"', "the black cat"),
    ('Here is a short phrase: "the black cat", which sits on the sofa.', "the black cat"),
    ('A short phrase that refers to the person: "the person on the left"', "the person on the left"),
    ("Short phrase: the cat on the left", "the cat on the left"),
    ("Description: a cat with black fur", "a cat with black fur"),
    ("Referring expression: the cat", "the cat"),
    ("Answer: Expression 2: the cat", "the cat"),
    ("expression_1: the cat", "the cat"),
    ("(1) the cat", "the cat"),
    ("1: the cat", "the cat"),
    ("1) the cat", "the cat"),
    ("1.the cat", "the cat"),
    ("#1. the cat", "the cat"),
    ("### the cat", "the cat"),
    ("• the cat", "the cat"),
    ("<think>The cat is on the left, so</think>\n\nthe cat on the left", "the cat on the left"),
    ("the cat is left, so</think>\nthe cat on the left", "the cat on the left"),  # the template opened it
    ("<think>The cat is on the left, so", ""),  # cut in its reasoning: no answer
    ("```\nthe cat on the left\n```", "the cat on the left"),
    ('The phrase is "the black cat".', "the black cat"),
    ('A good referring expression would be “the person on the left” because it is unique.', "the person on the left"),
    ("My answer is 'the red cup'", "the red cup"),
    ("Phrases:", ""),  # a preamble alone: no phrase (dropped as empty)
    ("Sure!", ""),
    # replies that keep their phrase as it was
    ('1. "The red cup."\nmore text', "The red cup"),
    ("- expression 2: the cat on the sofa", "the cat on the sofa"),
    ("a cat\n\nthe cat on the left", "a cat"),
    ("the cat on the left.", "the cat on the left"),
    ("左边的猫", "左边的猫"),
    ("“左边的猫”", "左边的猫"),
    ("「左边的猫」", "左边的猫"),
    ("the sign reading: stop", "the sign reading: stop"),  # a colon after no label and no "Here is"
    ('the sign whose caption is "Open"', 'the sign whose caption is "Open"'),
    ('the sign whose reply is "No"', 'the sign whose reply is "No"'),
    ("the answer is wrong sign", "the answer is wrong sign"),  # no quote: no preamble
    ("12:30 on the clock face", "12:30 on the clock face"),
    ('the "Stop" sign', 'the "Stop" sign'),
    ('"Stop" sign on the pole', '"Stop" sign on the pole'),
    ('"Stop" and "Go" signs', '"Stop" and "Go" signs'),
    ("'the cat's tail'", "the cat's tail"),
    ("the boys' bikes", "the boys' bikes"),
    ("3.5-inch floppy disk", "3.5-inch floppy disk"),
    ("2 cats on the bed", "2 cats on the bed"),
    ("the okay sign", "the okay sign"),
    ("okay hand sign", "okay hand sign"),
    ("the cat at (0.00, 0.00, 0.93, 1.00)", "the cat at (0.00, 0.00, 0.93, 1.00)"),  # text.check's to drop
    ("   ", ""),
    ('""', ""),
]


@pytest.mark.parametrize(("text", "phrase"), CLEAN)
def test_a_reply_gives_its_phrase_without_preamble_or_markup(text: str, phrase: str) -> None:
    assert clean(text) == phrase
    assert clean(clean(text)) == phrase  # the VLM steps clean, and accept cleans again


LISTS = [  # a list step's reply → its phrases, as accept cleans them
    ("Here are 3 phrases for the person:\n1. the person on the left side\n2. the big person\n3. the person in red",
     ["the person on the left side", "the big person", "the person in red"]),
    ("Sure! Here are the phrases:\n\n- **the cat on the left**\n- *the grey cat*\n\nLet me know if you need more!",
     ["the cat on the left", "the grey cat"]),  # the closing remark is no item of the list
    ('```json\n["the cat", "the dog"]\n```', ["the cat", "the dog"]),
    ('Here is the JSON:\n```json\n{"expression_1": "the cat", "expression_2": "a cat"}\n```', ["the cat", "a cat"]),
    ('Here you go:\n["the cat", "a cat"]\nThese refer to the cat.', ["the cat", "a cat"]),
    ('<think>{"expression_1": "no"} would be wrong</think>\n{"expression_1": "the cat"}', ["the cat"]),
    ('"the cat",\n"a grey cat",', ["the cat", "a grey cat"]),
    ("Here are phrases:\n**Expression 1:** the cat\n**Expression 2:** a grey cat", ["the cat", "a grey cat"]),
    ("Short phrases:\n(1) the cat\n(2) a cat\nLong phrases:\n(3) the grey cat on the sofa",
     ["the cat", "a cat", "the grey cat on the sofa"]),
    # a list without marks: the model's remark is no phrase (by its words, or as a paragraph after the list)
    ("the cat on the left\nthe grey cat\n\nThey all point to the same animal, from different angles.",
     ["the cat on the left", "the grey cat"]),
    ("the cat on the left\nthe grey cat\nI hope this helps!", ["the cat on the left", "the grey cat"]),
    ("the cat\n\nthe grey cat\n\nLet me know if you need more.", ["the cat", "the grey cat"]),
    ("These are two phrases for the cat.\nthe cat on the left\nthe grey cat", ["the cat on the left", "the grey cat"]),
    ("These are the phrases.\nthe cat\n\nthe grey cat", ["the cat", "the grey cat"]),  # a remark is no phrase
    ("the cat on the left\nthe grey cat\nEach of these expressions names the cat alone.",
     ["the cat on the left", "the grey cat"]),
    # replies that keep their phrases as they were
    ("a cat\n\nthe cat on the left", ["a cat", "the cat on the left"]),
    ("all the birds on the wire\nthe birds in a row\nthe answer sheet", ["all the birds on the wire",
                                                                         "the birds in a row", "the answer sheet"]),
    ("those two dogs\nthe dogs by the door", ["those two dogs", "the dogs by the door"]),
    ("左边的猫\n右边的狗", ["左边的猫", "右边的狗"]),
    ('["a cat", "the cat"]', ["a cat", "the cat"]),
    ('{"expression_1": "a cat", "expression_2": ""}', ["a cat", ""]),
]


@pytest.mark.parametrize(("text", "phrases"), LISTS)
def test_a_list_reply_gives_its_phrases_and_no_preamble(text: str, phrases: list[str]) -> None:
    assert [clean(p) for p in parse_list(text)] == phrases
    assert [clean(p) for p in read_list(Completion(text, meta={"finish_reason": "stop"}), 96)] == phrases


def test_a_header_takes_no_phrase_slot() -> None:
    """Before, "Here are 3 phrases for the person:" was the first of three phrases and the third real one
    was dropped as over the count."""
    text = "Here are 3 phrases for the person:\n1. the person on the left side\n2. the big person\n3. the man"
    counts: Counter[str] = Counter()
    got = accept(parse_list(text), "person", [], max_words=12, seen=set(), counts=counts, step="llm", limit=3)
    assert got == ["the person on the left side", "the big person", "the man"] and not counts


@pytest.mark.parametrize(("text", "why"), [
    ("Sure!", "no phrase in the reply: 'Sure!'"),
    ("Here are the phrases:\n", "no phrase in the reply"),
    ('```json\n["the cat", "the', "not the JSON object asked for"),  # a fence the server cut
    ('Here you go:\n["the cat", "the', "not the JSON object asked for"),
    ("<think>The cat is on the left", "only the model's reasoning"),
])
def test_a_list_reply_without_a_phrase_or_readable_json_is_unusable(text: str, why: str) -> None:
    with pytest.raises(Unusable, match=why):
        read_list(Completion(text, meta={"finish_reason": "stop"}), 96)


def test_a_reply_of_reasoning_alone_is_unusable_and_says_what_to_do() -> None:
    with pytest.raises(Unusable, match=r"only the model's reasoning \(<think>\) .*: serve the model with a "
                                       r"reasoning parser") as e:
        read_phrase(Completion("<think>The cat is on the left, so", meta={"finish_reason": "stop"}), 64)
    assert e.value.tell == "it held only your reasoning and no answer"
    with pytest.raises(Unusable, match=r"cut at the token limit \(max_tokens 64\); raise max_tokens"):
        read_text(Completion("<think>The image shows", meta={"finish_reason": "length"}), 64)
    # a server's reasoning parser returned the thinking apart (vLLM, SGLang, llama.cpp): the fix is not a parser
    apart = Completion("", meta={"finish_reason": "length", "reasoning_chars": 900})
    for read in (read_text, read_list):
        with pytest.raises(Unusable, match=r"only the model's reasoning \(the server's reasoning parser returned it "
                                           r"apart\) with an empty answer: it was cut at the token limit \(max_tokens "
                                           r"64\); raise max_tokens, or turn thinking off .*enable_thinking: false"):
            read(apart, 64)
        # an API that keeps the reasoning to itself (OpenAI's reasoning models): empty, cut
        with pytest.raises(Unusable, match=r"empty and was cut at the token limit \(max_tokens 64\): a reasoning "
                                           r"model may have spent it all on reasoning; raise max_tokens"):
            read(Completion("", meta={"finish_reason": "length"}), 64)
        with pytest.raises(Unusable, match="empty reply: the model wrote no text"):
            read(Completion(" ", meta={"finish_reason": "stop"}), 64)
    # the caption is the answer, not the reasoning
    assert read_text(Completion("<think>hmm</think>\nA cat on a sofa.", meta={}), 64) == "\nA cat on a sofa."


def test_a_reply_the_server_stopped_below_max_tokens_names_the_servers_limit() -> None:
    """llama-server stops a request whose context is full ("length" after fewer tokens than max_tokens):
    the fix is the server's context, not max_tokens."""
    limit = {"finish_reason": "length", "stopped_below_max_tokens": 64}
    server = r"the server stopped it after 7 tokens, below max_tokens 64: its context ran out"
    with pytest.raises(Unusable, match=rf"cut and needed repair: {server}"):
        read_list(Completion('{"expression_1": "the cat on', completion_tokens=7, meta=limit), 64)
    with pytest.raises(Unusable, match=rf"the reply is empty: {server}"):
        read_text(Completion("", completion_tokens=7, meta=limit), 64)
    with pytest.raises(Unusable, match=rf"apart\) with an empty answer: {server}.*; or turn thinking off"):
        read_text(Completion("", completion_tokens=7, meta={**limit, "reasoning_chars": 50}), 64)
