import pytest

import reallod.agent.agent_config as agent_config
from tests.agent.io_helpers import EXAMPLES, read_jsonl
from tests.agent.scripted import answer, plan, reflect, rewrite, scripted_roles
from tests.cli_helpers import run_cli


def script(role, messages):
    text = str(messages[-1]["content"])
    if role == "reflector":
        judged = text.rsplit("Expression to judge:", 1)[-1]
        return reflect("uncertain", missing="colour") if "blue" in judged else reflect("correct")
    if role == "planner":
        return plan("uncertain", focus="object", question="What colour is it?") \
            if "Reviewer's verdict: uncertain" in text else plan("correct")
    if role == "vlm":
        return answer("it is orange")
    return rewrite("the orange one")


@pytest.fixture
def scripted(monkeypatch):
    """Build scripted roles instead of loading the config's models; record the config arguments."""
    seen = {}
    real_load = agent_config.load_agent_config

    def load(path, **kw):
        seen.update(kw, path=path)
        return real_load(path, **kw)

    monkeypatch.setattr(agent_config, "load_agent_config", load)
    monkeypatch.setattr(agent_config, "build_roles", lambda cfg: scripted_roles(script))
    return seen


def test_realign_writes_output_trace_report_and_prints_the_summary(tmp_path, capsys, scripted):
    out = tmp_path / "r.jsonl"
    code, stdout, err = run_cli(["realign", EXAMPLES / "realdata.jsonl", "--config", "offline", "--out", out,
                                 "--images", EXAMPLES / "images", "--limit", "4", "--max-cycles", "3",
                                 "--unresolved", "drop", "--base-url", "http://127.0.0.1:9/v1",
                                 "--report-dir", tmp_path / "rep"], capsys)
    assert code == 0, err
    assert scripted["base_url"] == "http://127.0.0.1:9/v1" and scripted["path"] == "offline"
    assert out.exists() and (tmp_path / "r.trace.jsonl").exists()
    for words in ("4 task(s)", "calls per role", "vlm:object_crop", "what reached the output", str(out),
                  "r.trace.jsonl", "index.html"):
        assert words in stdout, words
    records = read_jsonl(out)
    person = records[0]["pairs"]["vlm_short"][0]
    assert person["positive_expressions"] == ["the smiling astronaut in an orange spacesuit"]  # blue: unresolved, dropped
    assert [p["agent"] for p in person["provenance"]] == ["offline"]
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "the astronaut in a blue spacesuit" in html and "object_crop" in html
    pictures = list((tmp_path / "rep" / "img").glob("*object_crop.jpg"))
    assert pictures and list((tmp_path / "rep" / "img").glob("*_card.png"))


def test_explain_prints_one_task(tmp_path, capsys, scripted):
    out = tmp_path / "r.jsonl"
    assert run_cli(["realign", EXAMPLES / "realdata.jsonl", "--config", "offline", "--out", out,
                    "--images", EXAMPLES / "images", "--limit", "2"], capsys)[0] == 0
    code, stdout, _ = run_cli(["realign", "--explain", tmp_path / "r.trace.jsonl", "--task", "0/vlm_short/0/1"], capsys)
    assert code == 0
    for words in ("task 0/vlm_short/0/1", "the astronaut in a blue spacesuit", "reflector", "planner",
                  "view object_crop crop [30, 15, 370, 512]", "What colour is it?", "it is orange",
                  "verdict    unresolved after 3 cycle(s)"):
        assert words in stdout, words
    code, _, err = run_cli(["realign", "--explain", tmp_path / "r.trace.jsonl", "--task", "nope"], capsys)
    assert code == 2 and err.count("\n") == 1 and "no task 'nope'" in err and "0/vlm_short/0/0" in err


@pytest.mark.parametrize(("args", "words"), [
    (["realign", "--config", "offline"], "missing INPUT, --out"),
    (["realign", "--explain", "x.trace.jsonl"], "--explain needs --task"),
    (["realign", EXAMPLES / "realdata.jsonl", "--config", "offline", "--out", "{tmp}/o.jsonl", "--unresolved", "maybe"],
     "--unresolved 'maybe'"),
    (["realign", "{tmp}/missing.jsonl", "--config", "offline", "--out", "{tmp}/o.jsonl"], "missing.jsonl: no such file"),
    (["realign", EXAMPLES / "realdata.jsonl", "--config", "nonesuch", "--out", "{tmp}/o.jsonl"], "nonesuch: no such config"),
    (["realign", EXAMPLES / "realdata.jsonl", "--config", "offline", "--out", "{tmp}/o.jsonl", "--images", "{tmp}/no"],
     "image root is not a directory"),
])
def test_usage_and_input_errors_are_one_line(tmp_path, capsys, scripted, args, words):
    args = [str(a).replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and words in err
    assert "Traceback" not in err


def test_report_shows_only_crops_that_match_the_trace(tmp_path, capsys, scripted):
    from reallod.agent.task_report import write_report
    from reallod.runs.image_root import ImageLoader

    out = tmp_path / "r.jsonl"
    assert run_cli(["realign", EXAMPLES / "realdata.jsonl", "--config", "offline", "--out", out,
                    "--images", EXAMPLES / "images", "--limit", "2"], capsys)[0] == 0
    trace = tmp_path / "r.trace.jsonl"
    lines = trace.read_text().splitlines()
    tampered = [line.replace('"crop_box":[30,15,370,512]', '"crop_box":[0,0,10,10]') for line in lines]
    assert tampered != lines
    (tmp_path / "t.trace.jsonl").write_text("\n".join(tampered) + "\n")
    write_report(tmp_path / "t.trace.jsonl", tmp_path / "rep", images=ImageLoader(EXAMPLES / "images"))
    md = (tmp_path / "rep" / "index.md").read_text()
    assert "differs from the recorded [0, 0, 10, 10]; not shown" in md
    assert not list((tmp_path / "rep" / "img").glob("*object_crop.jpg"))
    write_report(trace, tmp_path / "rep2", images=ImageLoader(tmp_path))  # no images there
    assert "image not shown" in (tmp_path / "rep2" / "index.md").read_text()
    assert list((tmp_path / "rep2" / "img").glob("*_card.png"))  # the card is still made, without pictures
