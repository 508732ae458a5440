"""What realign writes may never destroy what it reads or what another run is writing: an --out over
the captions or the response cache, or a second run on an output being written, is refused before any
model is called."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from reallod.agent.realign import RealignOptions, realign
from reallod.errors import ConfigError
from reallod.llm.cache import ResponseCache
from reallod.runs.journal import JournalBusy
from tests.agent.io_helpers import many_tasks, read_jsonl
from tests.agent.scripted import colour_judge, scripted_roles


def run(tmp_path, out, **extra):
    """realign over a few tasks with scripted roles; returns the run and the roles (their calls)."""
    roles = scripted_roles(colour_judge, vlm=False)
    opts = RealignOptions(input=tmp_path / "in" / "tasks.jsonl", config="scripted", out=out, **extra)
    return realign(opts, roles=roles), roles


@pytest.fixture
def inputs(tmp_path):
    many_tasks(tmp_path / "in", 6)
    captions = tmp_path / "in" / "caps.json"
    captions.write_text(json.dumps({f"img{k}.png": f"caption of image {k}" for k in range(5)}))
    cache = tmp_path / "c.sqlite"
    ResponseCache(cache).close()
    return captions, cache


@pytest.mark.parametrize(("what", "out", "written"), [
    ("the --captions file", "in/caps.json", "its output"),
    ("the response cache (--cache)", "c.sqlite", "its output"),
    ("the response cache (--cache)", "c", "its trace"),  # c.trace.jsonl: the cache's name below
])
def test_an_out_over_the_captions_or_the_cache_is_refused_before_any_model_call(tmp_path, inputs, what, out,
                                                                                written):
    captions, cache = inputs
    if out == "c":
        cache = cache.rename(tmp_path / "c.trace.jsonl")
    before = {p: p.read_bytes() for p in (captions, cache)}
    roles = scripted_roles(colour_judge, vlm=False)
    opts = RealignOptions(input=tmp_path / "in" / "tasks.jsonl", config="scripted", out=tmp_path / out,
                          captions=captions, cache=cache)
    with pytest.raises(ConfigError, match=rf"--out .*{out} would overwrite {re.escape(what)} \(.*\) with {written}: "
                                          "give another --out"):
        realign(opts, roles=roles)
    assert roles.reflector.backend.calls == [] and {p: p.read_bytes() for p in before} == before
    assert not (tmp_path / "c.journal.jsonl").exists() and not (tmp_path / "in" / "caps.journal.jsonl").exists()


def test_the_shared_cache_is_never_written_over_even_by_a_run_that_does_not_use_it(tmp_path, inputs, monkeypatch):
    """Other runs' answers are in it: --no-cache only means this run neither reads nor writes it."""
    monkeypatch.setenv("REALLOD_CACHE", str(tmp_path / "shared"))
    shared = tmp_path / "shared" / "responses.sqlite"
    for extra in ({}, {"no_cache": True}):
        with pytest.raises(ConfigError, match="would overwrite the shared response cache"):
            run(tmp_path, shared, **extra)


def test_an_out_over_the_agent_config_or_an_image_of_the_root_is_refused(tmp_path, inputs):
    config = tmp_path / "agent.yaml"
    config.write_text("name: x\n")
    with pytest.raises(ConfigError, match=r"would overwrite the agent config \(.*agent.yaml\) with its output"):
        realign(RealignOptions(input=tmp_path / "in" / "tasks.jsonl", config=str(config), out=config),
                roles=scripted_roles(colour_judge, vlm=False))
    image = next((tmp_path / "in").glob("*.png"))
    before = image.read_bytes()
    with pytest.raises(ConfigError, match=r"would overwrite an image of the image root"):
        run(tmp_path, image)  # the images are beside the input
    assert image.read_bytes() == before


def test_cache_and_no_cache_together_are_refused(tmp_path, inputs):
    with pytest.raises(ConfigError, match=r"--cache .* and --no-cache contradict each other"):
        run(tmp_path, tmp_path / "o.jsonl", cache=inputs[1], no_cache=True)


HOLD = """
import sys
from reallod.runs.journal import lock_journal
from pathlib import Path
lock_journal(Path(sys.argv[1]))
print("ready", flush=True)
sys.stdin.read()
"""


def test_a_second_run_on_an_out_being_written_is_refused_before_any_model_call(tmp_path, inputs):
    """Two runs on one --out both ran every task (twice the requests), doubled the journal and
    interleaved their trace lines for good."""
    first, _ = run(tmp_path, tmp_path / "out" / "o.jsonl", no_cache=True)
    files = {p: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    journal = tmp_path / "out" / "o.journal.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(journal)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        roles = scripted_roles(colour_judge, vlm=False)
        opts = RealignOptions(input=tmp_path / "in" / "tasks.jsonl", config="scripted", out=tmp_path / "out" / "o.jsonl",
                              no_cache=True, max_cycles=1)  # a changed config: would even be refused later
        with pytest.raises(JournalBusy, match=rf"another run \(pid {proc.pid}\) is writing this journal"):
            realign(opts, roles=roles)
        assert roles.reflector.backend.calls == []
        assert {p: p.read_bytes() for p in (tmp_path / "out").iterdir() if p.suffix != ".lock"} == files
    finally:
        proc.kill()
        proc.wait()
    again, roles = run(tmp_path, tmp_path / "out" / "o.jsonl", no_cache=True)  # once it is gone: resumes
    assert again.info["tasks_run"] == 0 and roles.reflector.backend.calls == []
    assert read_jsonl(again.out) == read_jsonl(first.out)


def test_the_output_is_assembled_under_the_journal_lock(tmp_path, inputs, monkeypatch):
    """The lock went with the journal's close, before the output was assembled from it: a second run
    started then resumed and wrote the same output beside the first."""
    import reallod.agent.realign as realign_module
    from reallod.runs.journal import lock_journal, lock_path_for

    journal = tmp_path / "out" / "o.journal.jsonl"
    assemble, refused = realign_module.assemble, []

    def assemble_and_try_a_second_run(*args, **kwargs):
        with pytest.raises(JournalBusy) as busy:
            lock_journal(journal)
        refused.append(str(busy.value))
        return assemble(*args, **kwargs)

    monkeypatch.setattr(realign_module, "assemble", assemble_and_try_a_second_run)
    done, _ = run(tmp_path, tmp_path / "out" / "o.jsonl", no_cache=True)
    assert refused and done.summary.tasks == 6
    assert not lock_path_for(journal).exists()  # released once the output is written
    lock_journal(journal).release()
