"""What ``generate`` and ``pipeline`` refuse before any model call (an --out over an image of the image
root, a link there included, the response cache, the agent config or a folder; options that would be
ignored), the pipeline's summary of the pairs assembly dropped, and a CSV the csv module cannot parse."""

import shutil
from pathlib import Path

import pytest

import reallod.engine.pipeline as pl
from reallod.engine.annotations import read_annotations
from reallod.engine.pipeline import GenerateOptions, PipelineOptions, generate, pipeline
from reallod.errors import ConfigError, DataError
from reallod.llm.cache import default_cache_path
from tests.agent.scripted import plan, reflect, scripted_roles
from tests.cli_helpers import run_cli
from tests.engine.scripted_models import generation_answers

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def options(out: Path, images: Path = EXAMPLES / "images", config: str = "offline", **kw) -> GenerateOptions:
    return GenerateOptions(EXAMPLES / "annotations.json", images, config, out, limit=1, **kw)


def cli_roles(monkeypatch, log: list[str]) -> None:
    """Scripted models for the CLI; ``log`` gets every step a model was asked for."""
    monkeypatch.setattr(pl, "build_roles_for", lambda o: (scripted_roles(generation_answers(log=log)), "s", 1, 2))


def test_generate_refuses_an_out_over_an_image_the_cache_the_config_or_a_folder_before_any_call(tmp_path):
    images = Path(shutil.copytree(EXAMPLES / "images", tmp_path / "images"))
    config = tmp_path / "cfg.yaml"
    config.write_text("name: mine\n")
    cache = tmp_path / "mine.sqlite"
    cache.write_bytes(b"my cache")
    shared = default_cache_path()
    shared.parent.mkdir(parents=True, exist_ok=True)
    shared.write_bytes(b"shared cache")
    (tmp_path / "adir").mkdir()
    log: list[str] = []
    roles = scripted_roles(generation_answers(log=log))
    for opts, words in (
            (options(images / "coffee.jpg", images), "would overwrite an image of the image root"),
            (options(cache, cache=cache), "would overwrite the response cache"),
            (options(shared), "would overwrite the shared response cache"),
            (options(shared, no_cache=True), "would overwrite the shared response cache"),
            (options(config, config=str(config)), "would overwrite the agent config"),
            (options(tmp_path / "adir"), "a folder, where a file is written")):
        with pytest.raises(ConfigError, match=f"--out {opts.out}:? {words}"):
            generate(opts, roles=roles)
    assert log == []
    assert (images / "coffee.jpg").read_bytes() == (EXAMPLES / "images" / "coffee.jpg").read_bytes()
    assert cache.read_bytes() == b"my cache" and shared.read_bytes() == b"shared cache"
    assert config.read_text() == "name: mine\n" and not list((tmp_path / "adir").iterdir())
    assert not any(p.name.endswith(".journal.jsonl") for p in tmp_path.rglob("*"))


def test_the_pipeline_refuses_an_out_over_a_link_of_the_image_root_or_the_config(tmp_path):
    """The root's images may be links to files elsewhere: the link itself is replaced, so it is one of
    the root's images whatever it points at."""
    store, links = tmp_path / "store", tmp_path / "links"
    store.mkdir()
    links.mkdir()
    for image in (EXAMPLES / "images").iterdir():
        shutil.copy(image, store / image.name)
        (links / image.name).symlink_to(store / image.name)
    config = tmp_path / "cfg.yaml"
    config.write_text("name: mine\n")
    log: list[str] = []
    roles = scripted_roles(generation_answers(log=log))
    with pytest.raises(ConfigError, match="would overwrite an image of the image root"):
        pipeline(PipelineOptions(options(links / "coffee.jpg", links)), roles=roles)
    with pytest.raises(ConfigError, match=r"--out .*cfg\.yaml would overwrite the agent config"):
        pipeline(PipelineOptions(options(config, config=str(config))), roles=roles)
    named_like_a_stage = tmp_path / "o.generated.jsonl"  # the stage files are checked too
    named_like_a_stage.write_text("name: mine\n")
    with pytest.raises(ConfigError, match=r"the generated file .* would overwrite the agent config"):
        pipeline(PipelineOptions(options(tmp_path / "o.jsonl", config=str(named_like_a_stage))), roles=roles)
    assert log == [] and (links / "coffee.jpg").is_symlink() and config.read_text() == "name: mine\n"


@pytest.mark.parametrize("command", ["generate", "pipeline"])
def test_options_that_would_be_ignored_are_refused_before_any_call(tmp_path, monkeypatch, capsys, command):
    log: list[str] = []
    cli_roles(monkeypatch, log)
    argv = [command, "--annotations", EXAMPLES / "annotations.json", "--images", EXAMPLES / "images",
            "--out", tmp_path / "o.jsonl", "--limit", "1", "--no-progress"]
    code, _, err = run_cli([*argv, "--clip-threshold", "0.99"], capsys)
    assert code == 2 and "--clip-threshold" in err and "without --clip-model" in err, err
    code, _, err = run_cli([*argv, "--cache", tmp_path / "c.sqlite", "--no-cache"], capsys)
    assert code == 2 and "--cache" in err and "--no-cache" in err and "contradict" in err, err
    assert log == [] and list(tmp_path.iterdir()) == []
    code, out, err = run_cli([*argv, "--no-cache"], capsys)  # each alone is fine
    assert code == 0, out + err


def test_a_bad_unresolved_or_max_cycles_is_refused_before_any_call(tmp_path, monkeypatch, capsys):
    """The auditor's case: ``--unresolved drp`` was refused by re-alignment, once every generation call was
    made and the generated file written. No model is loaded either."""
    log: list[str] = []
    monkeypatch.setattr(pl, "build_roles_for",
                        lambda o: (log.append("load"), scripted_roles(generation_answers(log=log)), "s", 1, 2)[1:])
    argv = ["pipeline", "--annotations", EXAMPLES / "annotations.json", "--images", EXAMPLES / "images",
            "--out", tmp_path / "o.jsonl", "--limit", "1", "--no-progress"]
    code, _, err = run_cli([*argv, "--unresolved", "drp"], capsys)
    assert code == 2 and "--unresolved 'drp': expected drop, keep or negative" in err, err
    with pytest.raises(ConfigError, match="--max-cycles must be at least 1"):  # the API's: the CLI's is typer's
        pipeline(PipelineOptions(options(tmp_path / "o.jsonl"), max_cycles=0),
                 roles=scripted_roles(generation_answers(log=log)))
    assert log == [] and list(tmp_path.iterdir()) == []


def test_the_pipeline_summary_shows_the_pairs_assembly_dropped(tmp_path, monkeypatch, capsys):
    """A vlm_short pair has one positive: judged wrong and not repaired, the pair goes with its negatives,
    and the summary counts it (``realign``'s "what reached the output" table)."""
    judged = {"reflector": lambda cat, t: reflect("wrong" if "in the box" in t else "correct"),
              "planner": lambda cat, t: plan("wrong" if "Reviewer's verdict: wrong" in t else "correct")}
    monkeypatch.setattr(pl, "build_roles_for",
                        lambda o: (scripted_roles(generation_answers(judged)), "scripted", 1, 2))
    out = tmp_path / "o.jsonl"
    code, stdout, err = run_cli(["pipeline", "--annotations", EXAMPLES / "annotations.json", "--images",
                                 EXAMPLES / "images", "--out", out, "--limit", "1", "--no-progress"], capsys)
    assert code == 0, stdout + err
    assert "what reached the output" in stdout and "wrong:negative" in stdout
    assert "pair without positives:dropped" in stdout
    assert "vlm_short" not in out.read_text()  # every vlm_short pair was dropped


def test_a_box_csv_the_csv_module_cannot_parse_names_file_and_line(tmp_path):
    image_root = tmp_path / "img"
    image_root.mkdir()
    boxes, classes = tmp_path / "b.csv", tmp_path / "c.csv"
    boxes.write_text("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf\n"
                     "\nimg2," + "x" * 200_000 + ",/m/01,1,0,1,0,1,0,0,0\n")
    classes.write_text("/m/01,Dog\n")
    with pytest.raises(DataError, match=r"b\.csv:3: not a readable CSV line \(field larger than field limit"):
        read_annotations(boxes, image_root, classes=classes)
