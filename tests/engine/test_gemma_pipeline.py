"""The real offline config end to end: Gemma 3 270M (GGUF, in-process) writes the LLM steps and
re-aligns them; there is no VLM, so its steps are reported unavailable. A base model: this checks the
plumbing (real constrained decoding, parsing, journal, assembly, a valid output), not the quality."""

from pathlib import Path

import pytest

from reallod.data.validate import validate_file
from reallod.engine.generate import GenerateSettings
from reallod.engine.pipeline import GenerateOptions, PipelineOptions, pipeline

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_offline_pipeline_on_the_bundled_example(tmp_path):
    out = tmp_path / "out.jsonl"
    settings = GenerateSettings(llm_expressions=2, group_expressions=0, hard_negatives=2, easy_negatives=1,
                                max_objects=1, llm_max_tokens=48)
    opts = GenerateOptions(EXAMPLES / "annotations.json", EXAMPLES / "images", "offline", out, limit=1,
                           settings=settings, no_cache=True)
    run = pipeline(PipelineOptions(opts, max_cycles=1))
    g = run.generated
    assert g.unavailable == ["caption", "vlm_short", "vlm_long"]
    # hard negatives are asked for an object with a positive left: a base model's phrases may all be dropped
    # (copies of the prompt, or cut at the token limit)
    assert g.counts["llm: calls"] == 1 and g.counts["hard_negative: calls"] == (1 if g.counts["llm:kept"] else 0)
    # what a base model writes may all be dropped (it copies the prompt; a phrase it has not finished within
    # its share of the token limit is cut): then the output is empty, and says so
    assert validate_file(out).ok if g.counts["llm:kept"] else out.read_bytes() == b""
    llm_drops = sum(n for k, n in g.counts.items() if k.startswith("llm: ") and k.endswith(":dropped"))
    assert g.counts["llm:kept"] + llm_drops >= 1  # every reply is accounted for: kept, or dropped with a reason
    text = out.read_text()
    if g.counts["llm:kept"]:
        assert '"source":"llm"' in text and run.realigned.summary.tasks == g.counts["llm:kept"]
    assert run.realigned.summary.tasks == sum(run.realigned.summary.verdicts.values())


def test_the_documented_offline_pipeline_command_finishes_cleanly(tmp_path, capsys):
    """README's and docs/engine.md's example, as a user runs it. The base model's phrases may all be
    dropped (they often copy the prompt): the run still ends with status 0, says why, and writes every
    file, empty or not."""
    from tests.cli_helpers import run_cli

    out = tmp_path / "engine" / "realdata.jsonl"
    code, stdout, err = run_cli(["pipeline", "--annotations", EXAMPLES / "annotations.json", "--images",
                                 EXAMPLES / "images", "--config", "offline", "--out", out, "--limit", "1",
                                 "--max-objects", "1", "--max-cycles", "1", "--cache", tmp_path / "c.sqlite",
                                 "--no-progress"], capsys)
    assert code == 0, stdout + err
    assert "generate: 1 image(s) (1 now, 0 resumed)" in stdout and "llm: calls 1" in stdout
    assert "realign: " in stdout and f"-> {out}" in stdout
    for name in ("realdata.generated.jsonl", "realdata.realigned.jsonl", "realdata.jsonl"):
        assert (out.parent / name).is_file(), name
    if not out.read_bytes():
        assert "no record written: every expression was dropped" in stdout
    else:
        assert validate_file(out).ok
