"""``realign --ray`` sized by the live nodes, rerun after the cluster changed: it resumes the earlier
run's shards (their journals say how many) instead of starting others and orphaning them. Ray itself is
stood in for (the shards run here, one after the other); the local-Ray test is in test_shards_merge."""

from __future__ import annotations

import contextlib
import json

import pytest

import reallod.agent.realign_ray as rr
from reallod.agent.realign import RealignOptions
from reallod.errors import ConfigError
from tests.agent.io_helpers import many_tasks, read_jsonl
from tests.agent.scripted import colour_judge, scripted_roles


@pytest.fixture
def cluster(monkeypatch):
    """A stand-in Ray whose number of live nodes the test sets; records what it says and runs."""
    import reallod.agent.agent_config as agent_config

    state = {"nodes": 2, "started": 0, "said": []}

    @contextlib.contextmanager
    def session(address=None):
        state["started"] += 1
        yield None

    monkeypatch.setattr(agent_config, "build_roles", lambda cfg: scripted_roles(colour_judge, vlm=False))
    monkeypatch.setattr(rr, "import_ray", lambda: None)
    monkeypatch.setattr(rr, "ray_session", session)
    monkeypatch.setattr(rr, "live_nodes", lambda: state["nodes"])
    monkeypatch.setattr(rr, "map_on_ray", lambda fn, jobs, **kw: [fn(job) for job in jobs])
    return state


def ray_run(tmp_path, state, shards=None, **extra):
    opts = RealignOptions(input=tmp_path / "in" / "tasks.jsonl", config="offline", out=tmp_path / "out" / "o.jsonl",
                          no_cache=True, **extra)
    return rr.realign_on_ray(opts, shards=shards, say=state["said"].append)


def journals(tmp_path):
    return sorted(p.name for p in (tmp_path / "out" / "o.shards").glob("*.journal.jsonl"))


def test_a_rerun_on_fewer_live_nodes_resumes_the_earlier_shards(tmp_path, cluster):
    many_tasks(tmp_path / "in", 12)
    first, infos = ray_run(tmp_path, cluster)
    assert [i["tasks_run"] for i in infos] and sum(i["tasks_run"] for i in infos) == 12
    assert journals(tmp_path) == ["shard-1-of-2.journal.jsonl", "shard-2-of-2.journal.jsonl"]
    cluster["nodes"] = 1  # a node was lost
    merged, infos = ray_run(tmp_path, cluster)
    assert merged.shards == 2 and [i["tasks_run"] for i in infos] == [0, 0]
    assert sum(i["tasks_resumed"] for i in infos) == 12
    assert journals(tmp_path) == ["shard-1-of-2.journal.jsonl", "shard-2-of-2.journal.jsonl"]  # none orphaned
    assert read_jsonl(merged.out) == read_jsonl(first.out)
    assert len(cluster["said"]) == 1 and "resuming the earlier run in 2 shards" in cluster["said"][0]
    assert "1 Ray node(s) are live now" in cluster["said"][0]
    cluster["nodes"] = 2
    ray_run(tmp_path, cluster)
    assert len(cluster["said"]) == 1  # as many live nodes as shards: nothing to say


def test_other_ray_shards_than_the_earlier_run_are_refused_before_ray_starts(tmp_path, cluster):
    many_tasks(tmp_path / "in", 6)
    ray_run(tmp_path, cluster)
    cluster["started"] = 0
    with pytest.raises(ConfigError, match=r"--ray-shards 3: .*o\.shards holds the journals of a run of this output "
                                          r"in 2 shards.*rerun with --ray-shards 2, or delete"):
        ray_run(tmp_path, cluster, shards=3)
    assert cluster["started"] == 0 and journals(tmp_path) == ["shard-1-of-2.journal.jsonl",
                                                               "shard-2-of-2.journal.jsonl"]
    _, infos = ray_run(tmp_path, cluster, shards=2)  # the earlier run's number: resumed
    assert [i["tasks_run"] for i in infos] == [0, 0]
    stray = tmp_path / "out" / "o.shards" / "shard-1-of-3.journal.jsonl"
    stray.write_bytes((tmp_path / "out" / "o.shards" / "shard-1-of-2.journal.jsonl").read_bytes())
    with pytest.raises(ConfigError, match=r"runs of this output in 2 and 3 shards: pass --ray-shards"):
        ray_run(tmp_path, cluster)


def test_a_ray_out_over_the_captions_is_refused_before_ray_starts(tmp_path, cluster):
    many_tasks(tmp_path / "in", 6)
    captions = tmp_path / "in" / "caps.json"
    captions.write_text(json.dumps({f"img{k}.png": f"caption {k}" for k in range(5)}))
    before = captions.read_bytes()
    opts = RealignOptions(input=tmp_path / "in" / "tasks.jsonl", config="offline", out=captions, captions=captions,
                          no_cache=True)
    with pytest.raises(ConfigError, match=r"would overwrite the --captions file"):
        rr.realign_on_ray(opts)
    assert cluster["started"] == 0 and captions.read_bytes() == before


def test_ray_writes_the_reports_of_the_merged_run(tmp_path, cluster):
    """--report and --report-dir were dropped with --ray (the shards write none): no file, exit 0."""
    import json

    from reallod.agent.dispatch import RealignOutcome

    many_tasks(tmp_path / "in", 12)
    merged, infos = ray_run(tmp_path, cluster, report=tmp_path / "rep", report_dir=tmp_path / "pages")
    report = json.loads((tmp_path / "rep.json").read_text())
    assert report["tasks"] == 12 and report["run"]["shards"] == 2 and report["run"]["tasks_run"] == 12
    assert report["run"]["requests"]["sent"] == sum(i["requests"]["sent"] for i in infos) > 0
    assert "12 task(s); 0 resumed from the journal, 12 run now" in (tmp_path / "rep.md").read_text()
    assert (tmp_path / "pages" / "index.md").read_text().count("## task ") == 12
    assert merged.run_report == (tmp_path / "rep.json", tmp_path / "rep.md")
    assert merged.report == tmp_path / "pages" / "index.html"
    shown = RealignOutcome(merged=merged).renderables()
    assert any(isinstance(r, str) and "run report:" in r for r in shown)


def test_ctrl_c_says_where_the_shards_work_is_and_that_the_command_resumes(tmp_path, cluster, monkeypatch):
    """It printed only 'interrupted'."""
    from reallod.runs.session import RunInterrupted

    many_tasks(tmp_path / "in", 4)

    def interrupted(fn, jobs, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(rr, "map_on_ray", interrupted)
    with pytest.raises(RunInterrupted, match=r"the tasks the 2 shards finished are in their journals in .*o\.shards; "
                                             "rerun the same command to resume"):
        ray_run(tmp_path, cluster)


def test_ctrl_c_tells_every_running_job_and_waits_for_them(monkeypatch):
    """Ray's workers do not get the terminal's Ctrl-C: stopped with Ray, a shard left its journal locked
    and its last lines unwritten. Each is cancelled (a KeyboardInterrupt in its worker) and waited for."""
    import reallod.runs.ray as runs_ray

    class StandInRay:  # test double: the calls map_on_ray makes, with a Ctrl-C while it waits
        class exceptions:
            RayTaskError = RuntimeError

        def __init__(self):
            self.cancelled, self.waited = [], []

        @staticmethod
        def remote(**kw):
            return lambda fn: type("Task", (), {"remote": staticmethod(lambda job: f"ref-{job}")})

        def wait(self, refs, num_returns=1, timeout=None):
            if timeout is None:
                raise KeyboardInterrupt
            self.waited.append((list(refs), timeout))
            return refs, []

        def cancel(self, ref):
            self.cancelled.append(ref)

    ray = StandInRay()
    monkeypatch.setattr(runs_ray, "import_ray", lambda: ray)
    with pytest.raises(KeyboardInterrupt):
        runs_ray.map_on_ray(str, [1, 2])
    assert ray.cancelled == ["ref-1", "ref-2"] and ray.waited == [(["ref-1", "ref-2"], runs_ray.CANCEL_WAIT_S)]
