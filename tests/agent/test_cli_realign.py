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
     "no: image root not found (no such folder)"),
    # a Real-Data input keeps its sources: --source would have been ignored and every source re-aligned
    (["realign", EXAMPLES / "realdata.jsonl", "--config", "offline", "--out", "{tmp}/o.jsonl", "--source", "llm"],
     "--source llm: names the source of a published task list's output pairs"),
    # options that only mean something with another: the run went on without them
    (["realign", EXAMPLES / "realdata.jsonl", "--config", "offline", "--out", "{tmp}/o.jsonl", "--task", "0"],
     "--task ID picks the task --explain TRACE prints: give --explain as well"),
    (["realign", EXAMPLES / "realdata.jsonl", "--config", "offline", "--out", "{tmp}/o.jsonl", "--ray-shards", "2"],
     "--ray-shards N splits a --ray run: give --ray [ADDRESS] as well"),
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
    assert r"differs from the recorded \[0, 0, 10, 10\]; not shown" in md  # brackets escaped: no link
    assert not list((tmp_path / "rep" / "img").glob("*object_crop.jpg"))
    write_report(trace, tmp_path / "rep2", images=ImageLoader(tmp_path))  # no images there
    assert "image not shown" in (tmp_path / "rep2" / "index.md").read_text()
    assert list((tmp_path / "rep2" / "img").glob("*_card.png"))  # the card is still made, without pictures


def test_failed_tasks_are_shown_by_reason_and_every_task_failing_exits_1(tmp_path, capsys, scripted):
    # the images are in examples/images, not next to the input (the default image root)
    args = ["realign", EXAMPLES / "tasks.json", "--config", "offline", "--out", tmp_path / "r.jsonl",
            "--report", tmp_path / "run"]
    code, stdout, err = run_cli(args, capsys)
    assert code == 1, stdout + err
    assert "EVERY TASK FAILED (22): failed tasks by reason (one example each)" in stdout
    assert "missing_image" in stdout and "image not found" in stdout  # the reason and one example
    assert err.startswith("error: every task of realign failed (22 of 22), so nothing was re-aligned: "
                          "missing_image: 22 task(s), e.g. 0: ") and err.count("\n") == 1
    assert (tmp_path / "r.jsonl").exists()  # the output is written all the same (--unresolved keep)
    assert "**Every task failed (22): nothing was re-aligned.**" in (tmp_path / "run.md").read_text()
    # some tasks failing is a normal run: status 0, the reasons shown
    lines = (EXAMPLES / "realdata.jsonl").read_text().splitlines()
    lines[0] = lines[0].replace('"astronaut.jpg"', '"gone.jpg"')
    (tmp_path / "some.jsonl").write_text("\n".join(lines) + "\n")
    code, stdout, err = run_cli(["realign", tmp_path / "some.jsonl", "--config", "offline", "--out",
                                 tmp_path / "some-out.jsonl", "--images", EXAMPLES / "images"], capsys)
    assert code == 0, err
    assert "failed tasks by reason (one example each)" in stdout and "EVERY TASK" not in stdout
    assert "missing_image" in stdout and "0/vlm_short/0/0" in stdout and "image not found" in stdout


def test_the_documented_realign_examples_write_to_distinct_outputs():
    """Two examples over different inputs must not share an --out: the second would be refused."""
    import re
    import shlex

    commands = []
    for doc in [EXAMPLES.parent / "README.md", *sorted((EXAMPLES.parent / "docs").glob("*.md"))]:
        text = re.sub(r"\\\n\s*", " ", doc.read_text())
        for line in text.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("reallod realign ") and " merge " not in f" {line} " and "--out" in line:
                words = shlex.split(line)
                out = words[words.index("--out") + 1]
                source = next(w for w in words[2:] if not w.startswith("-"))
                commands.append((out, source, doc.name))
    assert len(commands) >= 5, commands
    inputs: dict[str, set[str]] = {}
    for out, source, _ in commands:
        inputs.setdefault(out, set()).add(source)
    shared = {out: srcs for out, srcs in inputs.items() if len(srcs) > 1}
    assert not shared, f"documented realign examples over different inputs share an --out: {shared}"
