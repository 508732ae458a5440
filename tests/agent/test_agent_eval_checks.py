"""`reallod agent-eval`: what is refused before the run, what scores nothing, and how expressions match."""

from __future__ import annotations

import json
import os

import pytest

import reallod.agent.agent_config as agent_config
from reallod.agent.agent_eval import Gold, eval_markdown, evaluate, match_f1
from tests.agent.io_helpers import EXAMPLES
from tests.agent.scripted import colour_judge_with, scripted_roles
from tests.cli_helpers import run_cli

judge = colour_judge_with({"blue coffee mug": "the red espresso cup"})


def no_model(cfg):
    raise AssertionError("the agent's models were built: the refusal came after the run started")


def agent_eval(labelled, *args, capsys):
    return run_cli(["agent-eval", labelled, "--config", "offline", "--images", EXAMPLES / "images", *args], capsys)


@pytest.fixture
def labelled(tmp_path):
    """The bundled labelled example as a JSON list, as ``eval.json``."""
    items = [json.loads(line) for line in (EXAMPLES / "labelled.jsonl").read_text().splitlines() if line.strip()]
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(items))
    return path


@pytest.mark.parametrize("report", ["eval", "eval.json", "eval.md", "same.json", "run"])
def test_a_report_over_the_labelled_input_or_the_out_file_is_refused_before_the_run(
        tmp_path, labelled, capsys, monkeypatch, report):
    """--report FILE writes FILE.json: over the labelled input it lost the gold labels (a hard link
    names the same file under another name; ``run`` would write over --out run.json)."""
    monkeypatch.setattr(agent_config, "build_roles", no_model)
    os.link(labelled, tmp_path / "same.json")
    before = labelled.read_bytes()
    code, _, err = agent_eval(labelled, "--out", tmp_path / "run.json", "--report", tmp_path / report, capsys=capsys)
    assert code == 2, err
    assert err.startswith(f"error: --report {tmp_path / report} would overwrite ")
    assert "give another --report" in err
    assert labelled.read_bytes() == before and not (tmp_path / "run.json").exists()


@pytest.mark.parametrize("where", ["folder", "under a file"])
def test_a_report_that_cannot_be_written_is_refused_before_the_run(tmp_path, capsys, monkeypatch, where):
    """It failed only once the whole run was done (and, without --out, thrown away)."""
    monkeypatch.setattr(agent_config, "build_roles", no_model)
    if where == "folder":
        (tmp_path / "rep.json").mkdir()
        report, expected = tmp_path / "rep.json", "is a folder: give the path of a file"
    else:
        (tmp_path / "file").write_text("x")
        report, expected = tmp_path / "file" / "rep", f"{tmp_path / 'file'} is a file, not a folder"
    code, _, err = agent_eval(EXAMPLES / "labelled.jsonl", "--report", report, capsys=capsys)
    assert code == 2, err
    assert err.startswith("error: --report ") and expected in err


def test_a_real_data_records_file_is_refused_before_the_run(tmp_path, capsys, monkeypatch):
    """Its tasks are named 0/llm/0/0, its labels 0, 1...: nothing was scored, and the exit status was 0."""
    monkeypatch.setattr(agent_config, "build_roles", no_model)
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({"filename": "r.jpg", "height": 48, "width": 64, "caption": "a red square",
                                   "pairs": {"llm": [{"bboxes": [[0, 0, 32, 24]], "category": "square",
                                                      "relation": "single",
                                                      "positive_expressions": ["the blue square"],
                                                      "negative_expressions": []}]},
                                   "gold": {"correct": False, "expression": "the red square"}}) + "\n")
    code, _, err = agent_eval(records, capsys=capsys)
    assert code == 2, err
    assert err.startswith(f"error: {records}: a Real-Data records file")
    assert "agent-eval takes a labelled task list" in err and "docs/agent.md" in err


def test_labels_that_meet_no_result_are_shown_and_exit_1(tmp_path, labelled, capsys, monkeypatch):
    """Labels keyed by ids the run does not use: the report says so, and no score reads as success."""
    import reallod.agent.agent_eval as agent_eval_module

    monkeypatch.setattr(agent_config, "build_roles", lambda cfg: scripted_roles(judge, vlm=False))
    load_gold = agent_eval_module.load_gold
    monkeypatch.setattr(agent_eval_module, "load_gold",
                        lambda path: {f"{k}/llm/0/0": g for k, g in load_gold(path).items()})
    code, stdout, err = agent_eval(labelled, "--report", tmp_path / "rep", capsys=capsys)
    assert code == 1, stdout + err
    assert "22 labelled task(s) had no result in the run and 22 result(s) had no gold label" in stdout
    assert "No labelled task was scored" in stdout
    assert err.startswith("error: no labelled task was scored: 22 labelled task(s) had no result")
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["scored"] == 0 and rep["missing_results"] == 22 and rep["unlabelled_results"] == 22


def test_missing_and_unlabelled_results_are_shown_in_the_markdown():
    steps = [{"attempts": 1}]
    rep = evaluate({"0": Gold(True), "1": Gold(True)},
                   {"0": {"verdict": "correct", "raw_expression": "x", "steps": steps}, "7": {"verdict": "correct"}})
    assert rep.scored == 1 and rep.missing_results == 1 and rep.unlabelled_results == 1
    assert "1 labelled task(s) had no result in the run and 1 result(s) had no gold label" in eval_markdown(rep)
    assert "had no result" not in eval_markdown(evaluate({"0": Gold(True)}, {"0": rep_result("correct")}))


def rep_result(verdict, raw="the red cup", expression=None):
    return {"verdict": verdict, "raw_expression": raw, "expression": expression or raw, "steps": [{"attempts": 1}]}


@pytest.mark.parametrize(("a", "b"), [
    ("左边的红色杯子", "右边的蓝色狗"),  # Chinese: another side, colour and object
    ("la tête", "le pied"),
    ("Ölkanne", "Überhose"),
    ("crème brûlée", "crme brle"),  # accents are part of the word
    ("été", "ôté"),  # summer, removed: "t" and "t" before
    ("the", "a"),  # no content word on either side, and different words
    ("赤いカップ", "青い犬"),
])
def test_match_f1_tells_different_expressions_apart_in_any_script(a, b):
    """Only [a-z0-9]+ was kept, and two expressions left with no word matched perfectly."""
    assert match_f1(a, b) < 0.6


def test_match_f1_still_matches_the_same_expression():
    assert match_f1("Ölkanne!", "ölkanne") == 1.0
    assert match_f1("左边的红色杯子", "左边的红色杯子。") == 1.0
    assert match_f1("红色杯子", "红色的杯子") >= 0.6  # characters, as Chinese has no spaces
    assert match_f1("The.", "the") == 1.0 and match_f1("", "") == 1.0
    assert match_f1("crème brûlée", "creme brulee") == 0.0


def test_rewrites_with_no_gold_expression_are_left_out_of_the_fix_rate():
    """The gold expression is optional: a wrong raw expression rewritten with nothing to compare to was
    counted as not fixed, so the fix rate read 0% with no gold expression at all."""
    gold = {"0": Gold(False), "1": Gold(False), "2": Gold(True)}
    results = {"0": rep_result("rewritten", "the blue cup", "the red cup"),
               "1": rep_result("rewritten", "the dog", "the cat"), "2": rep_result("correct")}
    rep = evaluate(gold, results)
    assert rep.gold_wrong == 2 and rep.fix_unjudged == 2 and rep.fix_rate is None
    assert rep.to_dict()["wrong_caught_rate"] == 1.0
    md = eval_markdown(rep)
    assert "rewrite fix rate (wrong raw expressions replaced by a right one): n/a (0 of 0 judged; 2 rewrite(s)" in md
    gold["3"], results["3"] = Gold(False, ("the red mug",)), rep_result("rewritten", "the blue mug", "a red mug")
    gold["4"], results["4"] = Gold(False), rep_result("correct", "the bowl")  # kept as it was: not fixed
    mixed = evaluate(gold, results)
    assert mixed.fixed == 1 and mixed.fix_judged == 2 and mixed.fix_rate == pytest.approx(1 / 2)

