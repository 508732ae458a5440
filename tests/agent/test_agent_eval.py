"""`reallod agent-eval`: the agent's verdicts against gold labels."""

from __future__ import annotations

import json

import pytest
import typer

import reallod.agent.agent_config as agent_config
from reallod.agent.agent_eval import Gold, eval_markdown, evaluate, load_gold, match_f1
from reallod.errors import DataError
from tests.agent.io_helpers import EXAMPLES
from tests.agent.scripted import colour_judge_with, scripted_roles
from tests.cli_helpers import run_cli


def test_match_f1():
    assert match_f1("The red cup.", "the red cup") == 1.0
    assert match_f1("the red espresso cup", "a red cup") == pytest.approx(0.8)
    assert match_f1("the blue mug", "the red cup") == 0.0


def result(verdict, raw, expression=None, calls=2):
    steps = [{"role": "reflector", "attempts": 1, "prompt_tokens": 10, "completion_tokens": 4, "latency_s": 0.5}] * calls
    return {"verdict": verdict, "raw_expression": raw, "expression": expression or raw, "steps": steps,
            "elapsed_s": 1.5}


def test_evaluate_scores_by_hand():
    gold = {"0": Gold(True), "1": Gold(False, ("the red cup",)), "2": Gold(False), "3": Gold(True),
            "4": Gold(False, ("the cat",)), "5": Gold(False)}
    results = {
        "0": result("correct", "the red cup"),                      # kept, right
        "1": result("rewritten", "the blue cup", "a red cup"),      # fixed
        "2": result("rewritten", "the dog", "the cat"),             # nothing to compare: unjudged
        "3": result("rewritten", "the mug", "the mug."),            # rewrite of a correct one, equal: right
        "4": result("correct", "the dog"),                          # kept, wrong
        "5": result("unresolved", "the bowl", calls=3),             # caught, not kept
        "9": result("correct", "x"),                                # not labelled
    }
    rep = evaluate(gold, results)
    d = rep.to_dict()
    assert rep.tasks == 6 and rep.unlabelled_results == 1 and rep.missing_results == 0
    assert d["confusion"]["correct"]["correct"] == 1 and d["confusion"]["correct"]["rewritten"] == 1
    assert d["confusion"]["wrong"] == {"correct": 1, "rewritten": 2, "wrong": 0, "unresolved": 1, "failed": 0}
    assert rep.kept_precision == pytest.approx(3 / 4)  # 0, 1, 3 right; 4 wrong; 2 unjudged
    assert rep.rewrites_unjudged == 1 and rep.fix_rate == pytest.approx(1 / 3)  # 2, unjudged, is left out
    assert d["wrong_caught_rate"] == pytest.approx(3 / 4)
    assert d["per_task"]["calls"] == pytest.approx(13 / 6) and d["per_task"]["seconds"] == pytest.approx(1.5)


def test_gold_labels_are_checked(tmp_path):
    bad = tmp_path / "l.jsonl"
    bad.write_text(json.dumps({"raw_expression": "x", "gold": {"correct": "yes"}}) + "\n")
    with pytest.raises(DataError, match=r"l\.jsonl:1: gold: expected"):
        load_gold(bad)
    bad.write_text(json.dumps({"raw_expression": "x", "gold": {"correct": False, "expression": ""}}) + "\n")
    with pytest.raises(DataError, match="non-empty string"):
        load_gold(bad)
    bad.write_text(json.dumps({"raw_expression": "x", "gold": {"correct": True}}) + '\n{"gold": {"correct": tru\n')
    with pytest.raises(DataError, match=r"l\.jsonl:2: not valid JSON"):
        load_gold(bad)
    gold = load_gold(EXAMPLES / "labelled.jsonl")
    assert len(gold) == 22 and sum(not g.correct for g in gold.values()) == 11
    assert all(g.expressions for g in gold.values() if not g.correct)


# the rewriter fixes the mug and botches the rest
judge = colour_judge_with({"blue coffee mug": "the red espresso cup"})


def test_agent_eval_on_the_bundled_labelled_example(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(agent_config, "build_roles", lambda cfg: scripted_roles(judge, vlm=False))
    code, stdout, err = run_cli(["agent-eval", EXAMPLES / "labelled.jsonl", "--config", "offline",
                            "--images", EXAMPLES / "images", "--report", tmp_path / "eval"], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "eval.json").read_text())
    # gold wrong: 11; the judge catches the 4 blue/black ones (rewrites), keeps the 7 others as correct
    assert rep["confusion"]["wrong"]["rewritten"] == 4 and rep["confusion"]["wrong"]["correct"] == 7
    assert rep["confusion"]["correct"]["correct"] == 11
    assert rep["fixed"] == 1 and rep["fix_rate"] == pytest.approx(1 / 11)
    assert rep["kept_precision"] == pytest.approx(12 / 22)
    assert rep["per_task"]["calls"] > 1
    md = (tmp_path / "eval.md").read_text()
    assert "| raw wrong | 7 | 4 |" in md and "rewrite fix rate" in md
    assert "precision of kept expressions" in stdout


def test_failed_tasks_are_left_out_of_the_scores():
    gold = {"0": Gold(False, ("the red cup",)), "1": Gold(False), "2": Gold(True)}
    failed = {"verdict": "failed", "raw_expression": "x", "expression": "x", "steps": [],
              "error": "image not found", "error_kind": "missing_image"}
    rep = evaluate(gold, {"0": dict(failed), "1": dict(failed), "2": result("correct", "the cup")})
    assert rep.tasks == 3 and rep.failed == 2 and rep.failures == {"missing_image": 2}
    assert rep.failure_examples["missing_image"] == ("0", "image not found")
    assert rep.gold_wrong == 0 and rep.caught == 0  # a task that failed caught nothing
    assert rep.kept_precision == 1.0 and not rep.all_failed
    assert rep.to_dict()["confusion"]["wrong"]["failed"] == 2
    everything = evaluate(gold, {k: dict(failed) for k in gold})
    assert everything.all_failed and everything.kept_precision is None and everything.fix_rate is None
    md = eval_markdown(everything)
    assert "Every task failed (3 of 3)" in md and "no score" in md
    assert "| missing_image | 3 | `0`: image not found |" in md
    assert "wrong raw expressions not kept as they were: n/a" in md  # it read 100% before


def test_agent_eval_resumes_its_out_with_force_resume_as_its_error_advises(tmp_path, capsys, monkeypatch):
    """The refusal advised --force-resume, an option agent-eval did not have."""
    monkeypatch.setattr(agent_config, "build_roles", lambda cfg: scripted_roles(judge, vlm=False))
    args = ["agent-eval", EXAMPLES / "labelled.jsonl", "--config", "offline", "--images", EXAMPLES / "images",
            "--out", tmp_path / "teacher.jsonl"]
    assert run_cli([*args, "--max-cycles", "3"], capsys)[0] == 0
    code, _, err = run_cli([*args, "--max-cycles", "1"], capsys)
    assert code == 2 and "max_cycles (3 in the journal, 1 now)" in err and "--force-resume" in err, err
    code, _, err = run_cli([*args, "--max-cycles", "1", "--force-resume"], capsys)
    assert code == 0, err


def test_agent_eval_with_the_wrong_image_root_says_every_task_failed_and_exits_1(tmp_path, capsys, monkeypatch):
    """The images of examples/labelled.jsonl are in examples/images, not next to it (the default root)."""
    monkeypatch.setattr(agent_config, "build_roles", lambda cfg: scripted_roles(judge, vlm=False))
    code, stdout, err = run_cli(["agent-eval", EXAMPLES / "labelled.jsonl", "--config", "offline",
                                 "--report", tmp_path / "eval"], capsys)
    assert code == 1, stdout + err
    assert "Every task failed (22 of 22)" in stdout and "Failed tasks by reason" in stdout
    assert "missing_image" in stdout and "image not found" in stdout  # the reason, with an example
    assert err.startswith("error: every task of agent-eval failed (22 of 22)") and err.count("\n") == 1
    assert "missing_image: 22 task(s), e.g. 0: " in err
    rep = json.loads((tmp_path / "eval.json").read_text())
    assert rep["all_failed"] and rep["failures"] == {"missing_image": 22} and rep["kept_precision"] is None
    assert rep["wrong_caught_rate"] is None  # it read 100% ("wrong raw expressions not kept") before


def test_the_documented_agent_eval_example_names_the_image_root():
    from reallod.cli import app

    docs = (EXAMPLES.parent / "docs" / "agent-at-scale.md").read_text()
    assert "reallod agent-eval examples/labelled.jsonl --images examples/images" in docs
    help_text = typer.main.get_command(app).get_command(None, "agent-eval").help
    assert "reallod agent-eval examples/labelled.jsonl --images examples/images" in help_text


@pytest.fixture
def backends(monkeypatch):
    """The reflector backend of each run's scripted roles, in order."""
    built = []

    def build(cfg):
        roles = scripted_roles(judge, vlm=False)
        built.append(roles.reflector.backend)
        return roles

    monkeypatch.setattr(agent_config, "build_roles", build)
    return built


def test_a_rerun_answered_by_the_cache_costs_no_requests(tmp_path, capsys, backends):
    """agent-eval's requests and tokens are what the model was asked: a second run, answered by the
    response cache, asks nothing and reports no cost, the cache hits apart (it reported the first run's
    requests and tokens again)."""
    reports = []
    for i in (1, 2):
        code, _, err = run_cli(["agent-eval", EXAMPLES / "labelled.jsonl", "--config", "offline",
                                "--images", EXAMPLES / "images", "--report", tmp_path / f"r{i}"], capsys)
        assert code == 0, err
        reports.append(json.loads((tmp_path / f"r{i}.json").read_text()))
    first, second = reports
    assert first["requests"] == len(backends[0].calls) > 0 and first["prompt_tokens"] > 0
    assert backends[1].calls == []  # the second run asked the model nothing
    assert second["requests"] == second["prompt_tokens"] == second["completion_tokens"] == 0
    assert second["cache_hits"] == first["requests"] + first["cache_hits"]
    assert second["cached_prompt_tokens"] == first["prompt_tokens"] + first["cached_prompt_tokens"]
    assert second["calls"] == first["calls"] and second["per_task"]["requests"] == 0
    md = (tmp_path / "r2.md").read_text()
    assert "requests to the model 0.00" in md and f"{second['cache_hits']} request(s) in all" in md


def test_agent_eval_takes_a_cache_file_of_its_own(tmp_path, capsys, backends):
    """The docs tell to score a retrained student with "another --cache FILE": agent-eval had no --cache."""
    for name in ("a", "b"):
        code, _, err = run_cli(["agent-eval", EXAMPLES / "labelled.jsonl", "--config", "offline", "--images",
                                EXAMPLES / "images", "--cache", tmp_path / f"{name}.sqlite"], capsys)
        assert code == 0, err
        assert (tmp_path / f"{name}.sqlite").is_file() and backends[-1].calls  # asked afresh: its own cache
