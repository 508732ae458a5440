import pytest

from reallod.errors import ConfigError, DataError
from reallod.model import token_prompt as P
from reallod.model.texts import COCO_CLASSES, parse_texts, split_caption


def tok(bert_tokenizer):
    return lambda text: bert_tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(("raw", "clean"), [
    ("Mr. Smith's dog?", "Mr Smith's dog"),
    ("  the   red\tcar. ", "the red car"),
    ("what is it??", "what is it"),
    ("2.5 m tall pole", "2 5 m tall pole"),
])
def test_sanitize_removes_phrase_splitters(raw, clean):
    assert P.sanitize(raw) == clean


def test_tokens_never_contain_delimiters(bert_tokenizer):
    exprs = ["Mr. Smith's dog?", "the [SEP] thing [CLS]", "a cat"]
    tokens = P.tokenize_expressions(exprs, tok(bert_tokenizer))
    for ids in tokens:
        assert not set(ids) & P.DELIMITER_IDS
    assert bert_tokenizer.convert_ids_to_tokens(tokens[0]) == ["mr", "smith", "'", "s", "dog"]


def test_parallel_prompt_layout(bert_tokenizer):
    plan = P.plan_parallel(P.tokenize_expressions(["a dog", "the red car"], tok(bert_tokenizer)), 256)
    assert [p.input_ids for p in plan.prompts] == [(101, 1037, 3899, 1012, 102), (101, 1996, 2417, 2482, 1012, 102)]
    assert [p.spans for p in plan.prompts] == [((1, 3),), ((1, 4),)]
    assert [p.expression_ids for p in plan.prompts] == [(0,), (1,)]


def test_concat_chunks_to_the_budget(bert_tokenizer):
    exprs = [f"object number {i}" for i in range(10)]  # 3 tokens each, 4 with the '.'
    tokens = P.tokenize_expressions(exprs, tok(bert_tokenizer))
    plan = P.plan_concat(tokens, 14)  # [CLS] + 3 × 4 + [SEP] = 14
    assert [len(p.spans) for p in plan.prompts] == [3, 3, 3, 1]
    assert all(len(p.input_ids) <= 14 for p in plan.prompts)
    owners = [i for p in plan.prompts for i in p.expression_ids]
    assert owners == list(range(10))
    first = plan.prompts[0]
    for (s, e), i in zip(first.spans, first.expression_ids, strict=True):
        assert list(first.input_ids[s:e]) == tokens[i]
        assert first.input_ids[e] == P.DOT_ID
    assert first.input_ids[0] == P.CLS_ID and first.input_ids[-1] == P.SEP_ID


def test_long_expression_truncated_with_warning_or_error(bert_tokenizer):
    tokens = P.tokenize_expressions(["word " * 20, "short"], tok(bert_tokenizer))
    with pytest.warns(UserWarning, match="cut to 7"):
        plan = P.plan_parallel(tokens, 10)
    assert plan.truncated == [0]
    assert len(plan.prompts[0].input_ids) == 10
    with pytest.raises(ConfigError, match="20 tokens"):
        P.plan_parallel(tokens, 10, on_long="error")
    with pytest.raises(ConfigError, match="max_text_len"):
        P.plan_parallel(tokens, 513)


@pytest.mark.parametrize("bad", [[], ["  "], ["dog", "..."], ["?"]])
def test_empty_expressions_are_errors(bad):
    with pytest.raises(ConfigError):
        P.check_expressions(bad)


def test_batch_padding():
    a = P.Prompt((101, 5, 1012, 102), ((1, 2),), (0,))
    b = P.Prompt((101, 5, 6, 7, 1012, 102), ((1, 4),), (1,))
    ids, mask = P.batch_ids([a, b])
    assert ids[0] == [101, 5, 1012, 102, 0, 0] and mask[0] == [1, 1, 1, 1, 0, 0]
    assert mask[1] == [1] * 6


def test_split_caption_and_parse_texts(tmp_path):
    assert split_caption("a dog . the red car .") == ["a dog", "the red car"]
    assert split_caption("Mr. Smith's hat") == ["Mr. Smith's hat"]
    assert split_caption("dog") == ["dog"]
    f = tmp_path / "texts.txt"
    f.write_text("a person riding a horse\n\n  the left cup . a spoon .\n")
    out = parse_texts(["a dog . a cat .", str(f), "a dog"])
    assert out == ["a dog", "a cat", "a person riding a horse", "the left cup", "a spoon"]
    assert parse_texts(["$: coco"]) == list(COCO_CLASSES) and len(COCO_CLASSES) == 80


@pytest.mark.parametrize("values", [[" "], [" . . "], ["$: lvis"]])
def test_parse_texts_errors(values):
    with pytest.raises(ConfigError):
        parse_texts(values)


def test_text_file_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        parse_texts([str(tmp_path / "missing.txt")])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match="no expressions"):
        parse_texts([str(empty)])
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="UTF-8"):
        parse_texts([str(binary)])
