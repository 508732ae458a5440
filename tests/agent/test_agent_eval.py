"""`reallod agent-eval`: the agent's verdicts against gold labels."""

from __future__ import annotations

import json

import pytest

import reallod.agent.agent_config as agent_config
from reallod.agent.agent_eval import Gold, evaluate, load_gold, match_f1
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
    assert rep.rewrites_unjudged == 1 and rep.fix_rate == pytest.approx(1 / 4)
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
