"""generate → realign → assemble with scripted models: every step, malformed generations, resume,
and an output that passes ``data validate`` and ``data stats``."""

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from reallod.agent.realign import RunStopped
from reallod.data.stats import file_stats
from reallod.data.validate import validate_file
from reallod.engine.generate import GenerateSettings
from reallod.engine.pipeline import GenerateOptions, PipelineOptions, generate, pipeline
from reallod.errors import DataError
from reallod.llm.retry import EndpointDown
from reallod.runs.journal import JournalMismatch
from tests.agent.scripted import scripted_roles
from tests.cli_helpers import run_cli
from tests.engine.scripted_models import DEFAULTS, generation_answers

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def options(out: Path, **kw) -> GenerateOptions:
    return GenerateOptions(EXAMPLES / "annotations.json", EXAMPLES / "images", "offline", out, **kw)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pipeline_writes_valid_realdata_with_every_source(tmp_path):
    log: list[str] = []
    out = tmp_path / "out.jsonl"
    run = pipeline(PipelineOptions(options(out)), roles=scripted_roles(generation_answers(log=log)))
    assert validate_file(out).ok
    recs = records(out)
    assert [r["filename"] for r in recs] == ["astronaut.jpg", "coffee.jpg", "chelsea.jpg", "rocket.jpg"]
    assert recs[0]["caption"].startswith("A photograph") and "caption_source" not in recs[0]
    for r in recs:
        assert set(r["pairs"]) == {"vlm_short", "vlm_long", "llm"}
    rocket = recs[3]["pairs"]["llm"]
    group = [p for p in rocket if p["relation"] == "multi"]
    assert len(group) == 1 and group[0]["category"] == "mast" and len(group[0]["bboxes"]) == 2
    assert group[0]["positive_expressions"] == ["both masts", "the two masts"]
    cat = next(p for p in recs[2]["pairs"]["llm"] if p["category"] == "cat")
    assert cat["positive_expressions"] == ["the cat on the left", "a large cat", "the cat near the middle"]
    assert cat["origin_positive_expressions"] == cat["positive_expressions"]
    assert cat["negative_expressions"][:2] == ["the green cat", "the cat upside down"]
    easy = cat["negative_expressions"][2:]
    assert len(easy) == 2 and not any("cat" in n or "nose" in n for n in easy)
    assert all(p["source"] == "llm" and p["verdict"] == "correct" and "cycles" in p for p in cat["provenance"])
    stats = file_stats(out)
    assert stats.expressions > 0 and run.realigned.summary.verdicts["correct"] == run.realigned.summary.tasks
    assert log.count("caption") == 4 and log.count("vlm_short") == 12 and log.count("group") == 1


def test_malformed_generations_are_dropped_and_counted(tmp_path):
    overrides = {
        "vlm_short": lambda cat, t: '""',  # an empty phrase (a reply without text fails its image: below)
        "vlm_long": lambda cat, t: "A " + cat + " " + "that is very nice " * 20,  # overlong
        "llm": lambda cat, t: json.dumps({"expression_1": "the saucer under it" if cat == "cup" else f"a {cat}",
                                          "expression_2": f"a {cat}", "expression_3": f"A {cat}."}),
        "hard_negative": lambda cat, t: json.dumps({"expression_1": f"a {cat}", "expression_2": "the saucer"}),
    }
    run = generate(options(tmp_path / "gen.jsonl"), roles=scripted_roles(generation_answers(overrides)))
    c = run.counts
    assert c["vlm_short: empty:dropped"] == 12 and c["vlm_long: overlong:dropped"] == 12
    assert c["llm: wrong object:dropped"] == 1  # "the saucer under it" for the cup
    assert c["llm: duplicate:dropped"] >= 12
    recs = records(tmp_path / "gen.jsonl")
    cup = next(p for p in recs[1]["pairs"]["llm"] if p["category"] == "cup")
    assert cup["positive_expressions"] == ["a cup"]
    assert "a cup" not in cup["negative_expressions"] and "the saucer" not in cup["negative_expressions"]
    assert all(set(r["pairs"]) == {"llm"} for r in recs)


def test_without_a_vlm_the_vlm_steps_are_unavailable_and_llm_steps_run(tmp_path):
    log: list[str] = []
    run = generate(options(tmp_path / "gen.jsonl", limit=1),
                   roles=scripted_roles(generation_answers(log=log), vlm=False))
    assert run.unavailable == ["caption", "vlm_short", "vlm_long"]
    rec = records(tmp_path / "gen.jsonl")[0]
    assert rec["caption_source"] == "annotations" and "one person" in rec["caption"]
    assert set(rec["pairs"]) == {"llm"} and "caption" not in log


def test_a_killed_pipeline_resumes_at_the_stage_and_task_where_it_stopped(tmp_path):
    out = tmp_path / "out.jsonl"
    calls = {"n": 0}

    def die_in_generation(cat, t):
        calls["n"] += 1
        if calls["n"] > 2:  # the third image's caption
            raise EndpointDown("scripted: endpoint down")
        return "A caption."

    with pytest.raises(RunStopped):
        pipeline(PipelineOptions(options(out, concurrency=1)),
                 roles=scripted_roles(generation_answers({"caption": die_in_generation})))
    log: list[str] = []
    seen = {"reflector": 0}

    def die_in_realign(cat, t):
        seen["reflector"] += 1
        if seen["reflector"] > 5:
            raise EndpointDown("scripted: endpoint down")
        return generation_answers()("reflector", [{"role": "user", "content": t}])

    with pytest.raises(RunStopped):
        pipeline(PipelineOptions(options(out, concurrency=1)),
                 roles=scripted_roles(generation_answers({"reflector": die_in_realign}, log=log)))
    assert log.count("caption") == 2  # the two images done before the kill were not generated again
    log.clear()
    run = pipeline(PipelineOptions(options(out, concurrency=1)), roles=scripted_roles(generation_answers(log=log)))
    assert "caption" not in log and "llm" not in log  # generation is complete
    info = run.realigned.info  # one reflector call per task here: the 6th call stopped the run after 5 tasks
    assert info["tasks_resumed"] == 5 and info["tasks_run"] == run.realigned.summary.tasks - 5
    assert run.generated.resumed == 4 and run.generated.ran == 0
    assert validate_file(out).ok


def test_cli_pipeline_and_bad_annotations(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.json"
    data = json.loads((EXAMPLES / "annotations.json").read_text())
    data["annotations"][5]["image_id"] = 42
    bad.write_text(json.dumps(data))
    code, _, err = run_cli(["generate", "--annotations", bad, "--images", EXAMPLES / "images",
                            "--out", tmp_path / "g.jsonl"], capsys)
    assert code != 0
    assert "annotations[5].image_id" in err and "42" in err
    import reallod.engine.pipeline as pl

    monkeypatch.setattr(pl, "build_roles_for", lambda o: (scripted_roles(generation_answers()), "scripted", 3, 2))
    code, out, err = run_cli(["pipeline", "--annotations", EXAMPLES / "annotations.json", "--images",
                              EXAMPLES / "images", "--out", tmp_path / "o.jsonl", "--limit", "2", "--no-progress"],
                             capsys)
    assert code == 0, out + err
    assert "generate: 2 image(s)" in out and "assemble:" in out
    assert len(records(tmp_path / "o.jsonl")) == 2


def test_shards_split_images_and_settings_change_counts(tmp_path):
    from collections import Counter

    from reallod.engine.annotations import ReadOptions, read_annotations

    names, skipped = [], Counter()
    for k in (1, 2):
        run = generate(options(tmp_path / f"s{k}.jsonl", shard=f"{k}/2", min_area=3000,
                               settings=GenerateSettings(llm_expressions=1, hard_negatives=0, easy_negatives=0)),
                       roles=scripted_roles(generation_answers()))
        names += [r["filename"] for r in records(tmp_path / f"s{k}.jsonl")]
        skipped.update({k: n for k, n in run.counts.items() if k.startswith("annotations: ")})
    assert sorted(names) == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]
    whole = read_annotations(EXAMPLES / "annotations.json", EXAMPLES / "images",
                             options=ReadOptions(min_area=3000)).skipped
    assert whole and skipped == {f"annotations: {k}:skipped": n for k, n in whole.items()}  # each its own
    rec = records(tmp_path / "s1.jsonl")[0]
    single = [p for p in rec["pairs"]["llm"] if p["relation"] == "single"]
    assert all(len(p["positive_expressions"]) == 1 and p["negative_expressions"] == [] for p in single)
    # the same shard written another way resumes its journal (" 1/2" was refused as another shard)
    again = generate(options(tmp_path / "s1.jsonl", shard=" 1/2 ", min_area=3000,
                             settings=GenerateSettings(llm_expressions=1, hard_negatives=0, easy_negatives=0)),
                     roles=scripted_roles(generation_answers()))
    assert again.ran == 0 and again.resumed > 0


# --- a stage that yields nothing finishes cleanly -------------------------------------------------

NOTHING_KEPT = {  # every phrase is empty: every expression of every step is dropped (a reply without text
    "vlm_short": lambda cat, t: '""',  # would fail its image instead: test_unusable_replies.py)
    "vlm_long": lambda cat, t: '""',
    "llm": lambda cat, t: json.dumps({"expression_1": "", "expression_2": "", "expression_3": ""}),
    "group": lambda cat, t: json.dumps({"expression_1": "", "expression_2": ""}),
}


def stage_files(out: Path) -> list[Path]:
    return [out.with_name("o.generated.jsonl"), out.with_name("o.realigned.jsonl"), out]


def test_a_pipeline_whose_generation_keeps_nothing_finishes_with_empty_outputs(tmp_path):
    out = tmp_path / "o.jsonl"
    run = pipeline(PipelineOptions(options(out, limit=2)), roles=scripted_roles(generation_answers(NOTHING_KEPT)))
    c = run.generated.counts
    assert run.generated.records == 0 and c["image without expressions:empty record"] == 2
    assert c["vlm_short: empty:dropped"] > 0 and c["llm: empty:dropped"] > 0  # why: counted per step
    assert run.realigned.summary.tasks == 0 and not run.realigned.summary.all_failed
    for path in stage_files(out)[:2]:  # each image keeps its line in the stage files, without pairs
        assert [(r["filename"], r["pairs"]) for r in records(path)] == [("astronaut.jpg", {}), ("coffee.jpg", {})]
    assert out.read_bytes() == b"" and run.assembled["record without expressions:not written"] == 2
    # the empty stage resumes like any other: nothing is generated again
    log: list[str] = []
    again = pipeline(PipelineOptions(options(out, limit=2)), roles=scripted_roles(generation_answers(log=log)))
    assert log == [] and again.generated.resumed == 2


def test_cli_pipeline_that_keeps_nothing_prints_why_and_exits_0(tmp_path, monkeypatch, capsys):
    import reallod.engine.pipeline as pl

    monkeypatch.setattr(pl, "build_roles_for",
                        lambda o: (scripted_roles(generation_answers(NOTHING_KEPT)), "scripted", 3, 2))
    out = tmp_path / "o.jsonl"
    code, stdout, err = run_cli(["pipeline", "--annotations", EXAMPLES / "annotations.json", "--images",
                                 EXAMPLES / "images", "--out", out, "--limit", "1", "--no-progress"], capsys)
    assert code == 0, stdout + err
    assert "generate: 1 image(s) (1 now, 0 resumed)" in stdout
    assert "vlm_short: empty:dropped" in stdout and "llm: empty:dropped" in stdout  # the generate summary
    assert "no record written: every expression was dropped" in stdout
    assert "realign: 0 task(s): nothing to re-align" in stdout
    assert f"assemble: no record (record without expressions:not written 1) -> {out}" in stdout
    assert all(path.is_file() for path in stage_files(out))


def empty_shard(n: int = 8) -> str:
    """A shard K/N that holds none of the example's 4 images."""
    from reallod.runs.shard import shard_of

    names = [img["file_name"] for img in json.loads((EXAMPLES / "annotations.json").read_text())["images"]]
    used = {shard_of(f"image:{name}", n) for name in names}
    return f"{min(set(range(1, n + 1)) - used)}/{n}"


def test_a_shard_without_images_finishes_cleanly(tmp_path, monkeypatch, capsys):
    import reallod.engine.pipeline as pl

    log: list[str] = []
    monkeypatch.setattr(pl, "build_roles_for", lambda o: (scripted_roles(generation_answers(log=log)), "scripted", 3, 2))
    out = tmp_path / "o.jsonl"
    code, stdout, err = run_cli(["pipeline", "--annotations", EXAMPLES / "annotations.json", "--images",
                                 EXAMPLES / "images", "--out", out, "--shard", empty_shard(), "--no-progress"], capsys)
    assert code == 0, stdout + err
    assert "generate: 0 image(s)" in stdout and "no record written: no image selected" in stdout
    assert "realign: 0 task(s)" in stdout and log == []
    for path in stage_files(out):
        assert path.is_file() and path.read_bytes() == b"", path
    code, stdout, err = run_cli(["generate", "--annotations", EXAMPLES / "annotations.json", "--images",
                                 EXAMPLES / "images", "--out", tmp_path / "g.jsonl", "--shard", empty_shard(),
                                 "--no-progress"], capsys)
    assert code == 0 and "generated 0 image(s)" in stdout and (tmp_path / "g.jsonl").read_bytes() == b""


def test_a_larger_limit_resumes_every_stage(tmp_path):
    """The generated file grows by appended records; the re-alignment journal still takes it."""
    out = tmp_path / "o.jsonl"
    first = pipeline(PipelineOptions(options(out, limit=1)), roles=scripted_roles(generation_answers()))
    log: list[str] = []
    second = pipeline(PipelineOptions(options(out, limit=2)), roles=scripted_roles(generation_answers(log=log)))
    assert log.count("caption") == 1 and second.generated.resumed == 1  # only the new image is generated
    assert second.realigned.info["tasks_resumed"] == first.realigned.summary.tasks
    assert second.realigned.info["tasks_run"] == second.realigned.summary.tasks - first.realigned.summary.tasks > 0
    assert len(records(out)) == 2 and validate_file(out).ok
    # a generation started over (its journal deleted) may write other expressions: another input
    out.with_name("o.generated.journal.jsonl").unlink()
    with pytest.raises(JournalMismatch, match="different input"):
        pipeline(PipelineOptions(options(out, limit=2, force_resume=True)), roles=scripted_roles(generation_answers()))


def test_a_pipeline_whose_every_task_failed_says_so_and_exits_1(tmp_path, monkeypatch, capsys):
    import reallod.engine.pipeline as pl
    from reallod.llm.backends.base import BackendError

    def broken(cat, t):
        raise BackendError("scripted: the model answers nothing usable")

    monkeypatch.setattr(pl, "build_roles_for", lambda o: (
        scripted_roles(generation_answers({"reflector": broken})), "scripted", 1, 2))
    code, stdout, err = run_cli(["pipeline", "--annotations", EXAMPLES / "annotations.json", "--images",
                                 EXAMPLES / "images", "--out", tmp_path / "o.jsonl", "--limit", "1",
                                 "--no-progress"], capsys)
    assert code == 1, stdout + err
    assert "failed tasks by reason" in stdout and "scripted: the model answers nothing usable" in stdout
    assert "every task of the pipeline's re-alignment failed" in err and err.count("\n") == 1
    assert (tmp_path / "o.jsonl").is_file()  # written all the same: the failed expressions, by --unresolved


def boom(cat, t):
    from reallod.llm.backends.base import BackendError

    raise BackendError("scripted: HTTP 500: boom", kind="server")


def test_a_pipeline_against_a_failing_server_exits_1_with_its_error_and_a_rerun_retries(tmp_path, monkeypatch,
                                                                                        capsys):
    """Failed model calls are no dropped expressions: the images are not journaled as done."""
    import reallod.engine.pipeline as pl

    answers = {"answers": generation_answers({step: boom for step in ("caption", "vlm_short", "vlm_long", "llm",
                                                                        "group", "hard_negative")})}
    monkeypatch.setattr(pl, "build_roles_for", lambda o: (scripted_roles(answers["answers"]), "scripted", 1, 2))
    out = tmp_path / "o.jsonl"
    argv = ["pipeline", "--annotations", EXAMPLES / "annotations.json", "--images", EXAMPLES / "images",
            "--out", out, "--limit", "2", "--no-progress"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 1, stdout + err
    assert "2 image(s) not generated" in err and "server" in err and "HTTP 500: boom" in err
    assert err.count("\n") == 1 and not out.with_name("o.realigned.jsonl").exists()
    generate_argv = ["generate", *argv[1:argv.index("--out") + 1], tmp_path / "g.jsonl", *argv[argv.index("--out") + 2:]]
    code, stdout, err = run_cli(generate_argv, capsys)  # `reallod generate` alone: its count line says so too
    assert code == 1 and "generated 2 image(s) (0 now, 0 resumed, 2 failed)" in stdout, stdout + err
    calls = {"n": 0}

    def first_caption_fails(cat, t):
        calls["n"] += 1
        return boom(cat, t) if calls["n"] == 1 else "A caption."

    answers["answers"] = generation_answers({"caption": first_caption_fails})  # one image fails again
    code, stdout, err = run_cli(argv, capsys)
    assert code == 1 and "1 image(s) not generated" in err and "the others are re-aligned and written" in err
    assert "generate: 2 image(s) (1 now, 0 resumed, 1 failed)" in stdout and len(records(out)) == 1, stdout
    answers["answers"] = generation_answers()  # the server works again
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, stdout + err
    assert "generate: 2 image(s) (1 now, 1 resumed)" in stdout and len(records(out)) == 2


def test_an_image_whose_calls_failed_does_not_hold_up_the_pipeline_and_a_rerun_fills_its_place(tmp_path):
    """The others are re-aligned and written at once; the rerun generates the failed image into its own
    line of the generated file (no task id shifts) and re-aligns only its expressions."""
    from reallod.engine.pipeline import GenerationFailed, check_generated

    calls = {"n": 0}

    def second_caption_fails(cat, t):
        calls["n"] += 1
        return boom(cat, t) if calls["n"] == 2 else "A caption."

    out = tmp_path / "o.jsonl"
    first = pipeline(PipelineOptions(options(out, concurrency=1)),
                     roles=scripted_roles(generation_answers({"caption": second_caption_fails})))
    assert first.generated.failed == 1 and first.generated.counts["image not generated"] == 1
    with pytest.raises(GenerationFailed, match=r"1 image\(s\) not generated.*server 1 call.*HTTP 500: boom.*"
                                               r"the others are re-aligned and written"):
        check_generated(first.generated, pipeline=True)
    generated = records(out.with_name("o.generated.jsonl"))
    assert [(r["filename"], bool(r["pairs"])) for r in generated] == [
        ("astronaut.jpg", True), ("coffee.jpg", False), ("chelsea.jpg", True), ("rocket.jpg", True)]
    assert [r["filename"] for r in records(out)] == ["astronaut.jpg", "chelsea.jpg", "rocket.jpg"]
    tasks_before = first.realigned.summary.tasks
    log: list[str] = []
    run = pipeline(PipelineOptions(options(out, concurrency=1)), roles=scripted_roles(generation_answers(log=log)))
    assert log.count("caption") == 1 and run.generated.resumed == 3 and run.generated.ran == 1
    coffee = records(out.with_name("o.generated.jsonl"))[1]
    coffee_tasks = sum(len(p["positive_expressions"]) for pairs in coffee["pairs"].values() for p in pairs)
    assert log.count("reflector") == coffee_tasks > 0  # only the new image's expressions are re-aligned
    assert run.realigned.summary.tasks == tasks_before + coffee_tasks
    check_generated(run.generated, pipeline=True)  # complete: no error
    assert [r["filename"] for r in records(out)] == ["astronaut.jpg", "coffee.jpg", "chelsea.jpg", "rocket.jpg"]
    # `reallod generate` alone: an error only when every image it tried failed (no cache: answered above)
    gen = generate(options(tmp_path / "g.jsonl", limit=1, no_cache=True),
                   roles=scripted_roles(generation_answers({"llm": boom})))
    assert gen.failed == 1 and gen.ran == 0 and gen.failures["server"][1].startswith("llm: scripted: HTTP 500")
    with pytest.raises(GenerationFailed, match="nothing was generated"):
        check_generated(gen)


def test_a_generation_step_that_raises_a_bug_is_not_swallowed(tmp_path):
    def bug(cat, t):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        generate(options(tmp_path / "g.jsonl", limit=1), roles=scripted_roles(generation_answers({"llm": bug})))


def test_a_pipeline_refuses_an_out_over_its_inputs_before_any_work(tmp_path, monkeypatch, capsys):
    import reallod.engine.pipeline as pl
    from reallod.errors import ConfigError

    log: list[str] = []
    monkeypatch.setattr(pl, "build_roles_for",
                        lambda o: (scripted_roles(generation_answers(log=log)), "scripted", 1, 2))
    ann = tmp_path / "ann.json"
    ann.write_bytes((EXAMPLES / "annotations.json").read_bytes())
    code, stdout, err = run_cli(["pipeline", "--annotations", ann, "--images", EXAMPLES / "images", "--out", ann,
                                 "--limit", "1", "--no-progress"], capsys)
    assert code == 2 and "would overwrite the annotations" in err, stdout + err
    assert ann.read_bytes() == (EXAMPLES / "annotations.json").read_bytes() and log == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.json"]  # nothing written
    classes = tmp_path / "classes.csv"
    classes.write_text("/m/01,Cat\n")
    with pytest.raises(ConfigError, match="would overwrite the classes file"):
        pipeline(PipelineOptions(options(classes, classes=classes)), roles=scripted_roles(generation_answers()))
    assert classes.read_text() == "/m/01,Cat\n"


@pytest.mark.parametrize("http_client", ["aiohttp", "openai"])
def test_a_pipeline_against_a_server_closes_every_connection_it_opens(tmp_path, http_client):
    """Generation and re-alignment are two event loops sharing the roles: each closes what it opened
    (a run used to end with aiohttp's "Unclosed client session")."""
    import random
    import subprocess
    import sys

    from tests.agent.fake_openai_server import FakeChatServer, chat_reply, valid_decision
    from tests.agent.io_helpers import REPO, fake_server_config

    rng = random.Random(3)
    with FakeChatServer(lambda body: chat_reply(valid_decision(body, rng))) as server:
        cfg = fake_server_config(tmp_path / "cfg.yaml", server.url, concurrency=4)
        cfg.write_text(cfg.read_text().replace("max_tokens: 64", f"max_tokens: 64, http_client: {http_client}"))
        proc = subprocess.run(
            [sys.executable, "-W", "error::ResourceWarning", "-c", "from reallod.cli import main; main()",
             "pipeline", "--annotations", str(EXAMPLES / "annotations.json"), "--images", str(EXAMPLES / "images"),
             "--config", str(cfg), "--out", str(tmp_path / "o.jsonl"), "--limit", "2", "--max-cycles", "1",
             "--no-cache", "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert len(server.requests) > 10
    assert "Unclosed" not in proc.stderr and "ResourceWarning" not in proc.stderr, proc.stderr
    assert "realign: " in proc.stdout and validate_file(tmp_path / "o.jsonl").ok


def test_the_pipeline_takes_a_server_per_role_kind_and_refuses_values_it_would_replace(tmp_path, monkeypatch,
                                                                                         capsys):
    """generate and pipeline had --base-url only (the two-server vllm config could not be split across
    hosts), and --max-cycles 0 / --concurrency 0 silently became the config's values."""
    import reallod.engine.pipeline as pl

    seen = []

    def roles_for(opts):
        seen.append((opts.base_url, opts.llm_base_url, opts.vlm_base_url, opts.max_pixels))
        return scripted_roles(generation_answers()), "scripted", 1, 2

    monkeypatch.setattr(pl, "build_roles_for", roles_for)
    argv = ["pipeline", "--annotations", EXAMPLES / "annotations.json", "--images", EXAMPLES / "images",
            "--out", tmp_path / "o.jsonl", "--limit", "1", "--no-progress"]
    code, stdout, err = run_cli([*argv, "--llm-base-url", "http://a:1/v1", "--vlm-base-url", "http://b:2/v1",
                                 "--max-pixels", "200000000"], capsys)
    assert code == 0, stdout + err
    assert seen == [(None, "http://a:1/v1", "http://b:2/v1", 200_000_000)]
    for option, value in (("--max-cycles", "0"), ("--concurrency", "0"), ("--llm-expressions", "-1"),
                          ("--min-box-area", "-5"), ("--limit", "0")):
        code, _, err = run_cli([*argv, option, value], capsys)
        assert code == 2 and f"Invalid value for '{option}'" in err, (option, err)


def test_generation_samples_at_the_configs_temperatures(tmp_path):
    """The config's rewriter and vlm temperatures were not sent: a server then sampled at the model's own
    default (Qwen2.5's 0.7 from its generation_config under vLLM), so a run was not reproducible."""
    roles = scripted_roles(generation_answers())
    roles = replace(roles, rewriter=replace(roles.rewriter, temperature=0.2), vlm=replace(roles.vlm, temperature=0.0))
    run = generate(options(tmp_path / "g.jsonl", limit=1, no_cache=True), roles=roles)
    assert run.records == 1
    sent = {(c.role, c.temperature) for c in roles.rewriter.backend.calls}
    assert sent == {("rewriter", 0.2), ("vlm", 0.0)}


def test_only_the_images_a_run_generates_are_checked_on_disk(tmp_path):
    """A missing image that ``--limit`` does not select, or one the journal has done, does not stop the run:
    every start of every shard opened every image's header (minutes over Objects365)."""
    images = tmp_path / "images"
    shutil.copytree(EXAMPLES / "images", images)
    (images / "rocket.jpg").unlink()  # the fourth image
    opts = GenerateOptions(EXAMPLES / "annotations.json", images, "offline", tmp_path / "g.jsonl", limit=2,
                           no_cache=True)
    assert generate(opts, roles=scripted_roles(generation_answers())).ran == 2
    (images / "astronaut.jpg").unlink()  # done: the rerun with a larger --limit does not need it
    run = generate(replace(opts, limit=3), roles=scripted_roles(generation_answers()))
    assert run.ran == 1 and run.resumed == 2
    with pytest.raises(DataError, match=r"images\[3\]\.file_name: image 'rocket\.jpg' not found"):
        generate(replace(opts, limit=None), roles=scripted_roles(generation_answers()))
    assert len(records(tmp_path / "g.jsonl")) == 3  # what was written stays


def test_a_hard_negative_about_another_object_of_the_image_is_dropped(tmp_path):
    """The auditor's case: for the person, "the white helmet on the astronaut's head" (the helmet is annotated)
    was kept as a negative of the person."""
    hard = {"hard_negative": lambda cat, t: json.dumps({"expression_1": "the white helmet on the astronaut's head",
                                                       "expression_2": f"the {cat} upside down"})}
    run = generate(options(tmp_path / "g.jsonl", limit=1, no_cache=True),
                   roles=scripted_roles(generation_answers(hard)))
    assert run.records == 1 and run.counts["hard_negative: wrong object:dropped"] >= 3  # all but the helmet's
    person = next(p for p in records(tmp_path / "g.jsonl")[0]["pairs"]["llm"] if p["category"] == "person")
    assert "the white helmet on the astronaut's head" not in person["negative_expressions"]
    assert "the person upside down" in person["negative_expressions"]


def test_a_phrase_that_refers_to_no_one_object_alone_is_dropped(tmp_path):
    """rocket.jpg has two masts. The auditor's case: "the tall white mast" and "the mast" were single-box
    positives of both (contradictory targets for the detector), and a phrase an object got from two sources
    was kept twice (re-aligned twice)."""
    asked = {"vlm_short": 0, "llm": 0}

    def short(cat: str, t: str) -> str:
        if cat != "mast":
            return DEFAULTS["vlm_short"](cat, t)
        asked["vlm_short"] += 1
        return f"the mast number {asked['vlm_short']}"

    def llm(cat: str, t: str) -> str:
        if cat != "mast":
            return DEFAULTS["llm"](cat, t)
        asked["llm"] += 1
        own = ["the mast", "the mast number 1"] if asked["llm"] == 1 else ["the mast nearest the rocket"]
        return json.dumps({f"expression_{i}": e for i, e in enumerate(["the tall white mast", *own], 1)})

    answers = generation_answers({"vlm_short": short, "llm": llm})
    run = generate(options(tmp_path / "g.jsonl", no_cache=True), roles=scripted_roles(answers))
    rocket = next(r for r in records(tmp_path / "g.jsonl") if r["filename"] == "rocket.jpg")
    masts = {source: [p["positive_expressions"] for p in ps if p["category"] == "mast" and p["relation"] == "single"]
             for source, ps in rocket["pairs"].items()}
    # vlm_long wrote the same sentence for both masts: gone too
    assert masts == {"vlm_short": [["the mast number 1"], ["the mast number 2"]], "vlm_long": [],
                     "llm": [["the mast nearest the rocket"]]}
    assert run.counts["llm: given to several objects:dropped"] == 2
    assert run.counts["vlm_long: given to several objects:dropped"] == 2
    assert run.counts["llm: only the category, of which the image has several:dropped"] == 1
    assert run.counts["llm: duplicate of another source:dropped"] == 1


def test_an_lvis_category_is_named_in_prompts_as_people_name_it_and_its_phrases_are_kept(tmp_path):
    """The auditor's case: LVIS ``glass_(drink_container)`` was shown raw to the models, and "the glass next to
    the saucer" was dropped as about another object (it did not name "glass drink container")."""
    data = json.loads((EXAMPLES / "annotations.json").read_text())
    for c in data["categories"]:
        if c["name"] == "cup":
            c["name"] = "glass_(drink_container)"
    ann = tmp_path / "lvis.json"
    ann.write_text(json.dumps(data))
    def llm(cat: str, t: str) -> str:
        if cat != "glass":
            return DEFAULTS["llm"](cat, t)
        return json.dumps({"expression_1": "the glass next to the saucer",
                           "expression_2": "the glass (drink container) on the plate", "expression_3": "the white glass"})

    near = {"llm": llm}
    roles = scripted_roles(generation_answers(near))
    run = generate(GenerateOptions(ann, EXAMPLES / "images", "offline", tmp_path / "g.jsonl", no_cache=True),
                   roles=roles)
    prompts = [c.messages[-1]["content"] for c in roles.rewriter.backend.calls if c.role == "rewriter"]
    asked = [t for t in prompts if "Chosen object: glass at [" in t]
    assert asked and 'By "glass" this dataset means drink container.' in asked[0]
    assert not [t for t in prompts if "(drink container)" in t]
    coffee = next(r for r in records(tmp_path / "g.jsonl") if r["filename"] == "coffee.jpg")
    glass = next(p for p in coffee["pairs"]["llm"] if p["category"] == "glass (drink container)")
    assert glass["positive_expressions"] == ["the glass next to the saucer", "the glass on the plate",
                                             "the white glass"]
    assert run.counts.get("llm: wrong object:dropped", 0) == 0


def test_generate_clamp_boxes_from_the_command_line(tmp_path, monkeypatch, capsys):
    """Boxes past the border are refused, the option named; --clamp-boxes clamps them and counts those of
    the images the run generates (not the others of the file)."""
    ann = tmp_path / "ann.json"
    data = json.loads((EXAMPLES / "annotations.json").read_text())
    for image in (data["images"][0], data["images"][-1]):  # one box of each 10 px past the left border
        a = next(a for a in data["annotations"] if a["image_id"] == image["id"])
        a["bbox"] = [-10, a["bbox"][1], a["bbox"][2] + 10, a["bbox"][3]]
    ann.write_text(json.dumps(data))
    command = ["generate", "--annotations", ann, "--images", EXAMPLES / "images", "--out", tmp_path / "g.jsonl",
               "--limit", "1", "--no-progress"]
    code, _, err = run_cli(command, capsys)
    assert code != 0 and "--clamp-boxes clamps them to the image" in err and "lies outside its image" in err
    import reallod.engine.pipeline as pl

    monkeypatch.setattr(pl, "build_roles_for", lambda o: (scripted_roles(generation_answers()), "scripted", 3, 2))
    code, out, err = run_cli([*command, "--clamp-boxes"], capsys)
    assert code == 0, out + err
    assert re.search(r"annotations: boxes outside the image:clamped 1\b", out)  # the first image's: --limit 1
    pairs = records(tmp_path / "g.jsonl")[0]["pairs"]
    assert min(b[0] for group in pairs.values() for p in group for b in p["bboxes"]) == 0
