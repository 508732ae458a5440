"""Agent throughput: our concurrent runner against the published one-task-at-a-time loop.

A local OpenAI-compatible server (a benchmark harness, not a product backend: plain asyncio HTTP/1.1
with keep-alive, in its own process so its CPU is not counted as the agent's) answers every request
with a valid decision after a fixed simulated latency (default 100 ms). The same tasks (default
500, over the bundled example's four photographs, with a VLM role so image views are cut and
encoded) are run

  (a) one at a time, as the published loop does: each task's calls awaited in turn, the results
      kept in memory and written at the end (our workflow code, no journal, no cache);
  (b) by ``reallod realign``'s runner at concurrency 1, 8 and 64, with everything a real run has:
      journal with fsync, trace, a fresh response cache, output written from the journal.

and, for scale, at c=64 once more with ``http_client: openai`` (the official client instead of
aiohttp), and

  (c) the HTTP floor: no agent at all, bare aiohttp posting as many requests as (b) c=64 sent
      (bodies of the same mean size, to the byte), 64 at a time, to the same server: what the HTTP
      client library and the kernel's loopback path cost by themselves for those requests.

Decisions are a fixed function of the request, so every configuration does the same work
(about 60% of raw expressions judged correct at once, the rest rewritten or checked with the VLM).
Printed: wall time, tasks/s, ratio to (a), agent CPU time (user + system of this process, all its
threads) as a share of wall time and per request. Targets: c=64 at least 40x (a); agent CPU time
under 5% of wall time. The floor finishes sooner than (b) c=64 (no agent work between calls), so its
CPU is compared like for like: per request, and as a share of (b) c=64's wall time. On loopback the kernel charges the receiving side's TCP work to the
sender too, so every row here pays for part of the server's reads.

    .venv/bin/python benchmarks/agent_throughput.py                      # 500 tasks, 100 ms
    .venv/bin/python benchmarks/agent_throughput.py --tasks 100 --skip-sequential   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing as mp
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TARGET_SPEEDUP, TARGET_CPU_SHARE = 40.0, 0.05

# ------------------------------------------------------------------------------ the fake model server


def _decide(body: dict) -> str:
    """A valid decision for the role that asks, fixed by the request's content."""
    fmt = body.get("response_format") or {}
    props = set(((fmt.get("json_schema") or {}).get("schema") or fmt.get("schema") or {}).get("properties") or {})
    last = body["messages"][-1]["content"]
    text = " ".join(p.get("text", "") for p in last if p.get("type") == "text") if isinstance(last, list) else last
    h = int(hashlib.blake2b(text.encode(), digest_size=4).hexdigest(), 16) % 100
    if "verdict" in props:
        judged = text.rsplit("Expression to judge:", 1)[-1]
        checked = "rewritten object" in judged or "(none yet)" not in text  # a rewrite, or the VLM has looked
        verdict = "correct" if checked or h < 60 else "wrong" if h < 80 else "uncertain"
        return json.dumps({"missing": "colour" if verdict == "uncertain" else "", "feedback": "checked against "
                           "the caption", "verdict": verdict})
    if "state" in props:
        m = re.search(r"Reviewer's verdict: (\w+)", text)
        state = m.group(1) if m else "correct"
        return json.dumps({"reason": "follows the review", "state": state, "focus": ("object", "surroundings",
                           "position")[h % 3], "question": "What colour is it?" if state == "uncertain" else ""})
    if "expression" in props:
        return json.dumps({"expression": f"the rewritten object {h}"})
    if "answer" in props:
        return json.dumps({"answer": "it is orange and stands on the right"})
    return json.dumps({"error": "unknown role"})


async def _serve(port_out: mp.Queue, latency_s: float) -> None:
    received = {"requests": 0, "body_bytes": 0}  # GET /stats answers these (for the HTTP floor)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    break
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                if request_line.startswith(b"GET /stats"):
                    stats = orjson.dumps(received)
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: " + str(len(stats)).encode() + b"\r\n\r\n" + stats)
                    await writer.drain()
                    continue
                received["requests"] += 1
                received["body_bytes"] += length
                body = orjson.loads(await reader.readexactly(length)) if length else {}
                await asyncio.sleep(latency_s)
                text = _decide(body)
                payload = orjson.dumps({
                    "id": "bench", "object": "chat.completion", "created": 0, "model": body.get("model", "bench"),
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": length // 4,
                              "completion_tokens": len(text) // 4, "total_tokens": 0}})
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                             + str(len(payload)).encode() + b"\r\n\r\n" + payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    port_out.put(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def _server_main(port_out: mp.Queue, latency_s: float) -> None:
    asyncio.run(_serve(port_out, latency_s))


# ------------------------------------------------------------------------------ inputs


def _write_inputs(folder: Path, n: int, url: str, concurrency: int, vlm: bool = True) -> tuple[Path, Path]:
    """The task list, and a config whose roles all post to ``url`` (``bench.yaml``; ``bench-openai.yaml``
    is the same with the official client)."""
    tasks = json.loads((EXAMPLES / "tasks.json").read_text())
    with open(folder / "tasks.jsonl", "w") as f:
        for i in range(n):
            t = dict(tasks[i % len(tasks)])
            t["raw_expression"] = f"{t['raw_expression']} (variant {i // len(tasks)})"
            f.write(json.dumps(t) + "\n")
    role = f"{{backend: openai, model: bench-llm, base_url: '{url}', timeout_s: 60, max_tokens: 128}}"
    vlm_role = f"{{backend: openai, model: bench-vlm, base_url: '{url}', timeout_s: 60, max_tokens: 128}}" \
        if vlm else "null"
    for name, client in (("bench", "aiohttp"), ("bench-openai", "openai")):
        text = (f"name: {name}\nmax_cycles: 3\nconcurrency: {concurrency}\n"
                "retry: {max_attempts: 3, backoff_s: 0.1, max_backoff_s: 1.0}\n"
                f"roles:\n  reflector: {role}\n  planner: {role}\n  rewriter: {role}\n  vlm: {vlm_role}\n")
        (folder / f"{name}.yaml").write_text(text.replace("max_tokens: 128}", f"max_tokens: 128, http_client: {client}}}"))
    return folder / "tasks.jsonl", folder / "bench.yaml"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------------------ the two ways


def _warm_up(src: Path, cfg: Path) -> None:
    from reallod.agent.agent_config import build_roles, load_agent_config

    roles = build_roles(load_agent_config(cfg))

    async def one_call() -> None:
        try:
            await roles.reflector.backend.complete([{"role": "user", "content": "warm up"}])
        finally:
            await roles.aclose()

    asyncio.run(one_call())
    import reallod.agent.realign  # noqa: F401


def run_sequential(src: Path, cfg: Path, out: Path) -> tuple[int, int]:
    """(a) The published loop: one task at a time, results in memory, output written at the end."""
    from reallod.agent.agent_config import build_roles, load_agent_config
    from reallod.agent.assemble import assemble
    from reallod.agent.inputs import iter_tasks
    from reallod.agent.realign import run_one
    from reallod.runs.image_root import ImageLoader

    roles = build_roles(load_agent_config(cfg))
    images = ImageLoader(EXAMPLES / "images")

    async def loop() -> list:
        try:
            return [await run_one(item, roles, images, max_cycles=3) for item in iter_tasks(src)]
        finally:
            await roles.aclose()

    results = asyncio.run(loop())
    assemble("tasks", src, {r.task_id: {"verdict": r.verdict, "expression": r.expression} for r in results}, out)
    return len(results), sum(s.attempts for r in results for s in r.steps)


def run_ours(src: Path, cfg: Path, out: Path, concurrency: int) -> tuple[int, int]:
    """(b) ``reallod realign`` as a user runs it, minus the terminal output."""
    from reallod.agent.realign import RealignOptions, realign

    run = realign(RealignOptions(input=src, config=str(cfg), out=out, images=EXAMPLES / "images",
                                 concurrency=concurrency, cache=out.parent / "cache.sqlite"))
    return run.summary.tasks, run.info["requests"]["sent"]


def floor_body(size: int) -> bytes:
    """A chat request of ``size`` bytes (at least the envelope's): the text padded to the byte."""
    def body(text: str) -> bytes:
        return orjson.dumps({"model": "bench-llm", "max_tokens": 128, "messages": [
            {"role": "user", "content": "Expression to judge: " + text}]})

    pad = max(size - len(body("")), 0)
    return body(("word " * (pad // 5 + 1))[:pad])


def floor_share(floor_cpu: float, wall: float) -> float:
    """The floor's CPU time as a share of the agent run's wall time: the same requests over the same
    time, like for like with the agent's own share (the floor's own wall time is shorter)."""
    return floor_cpu / wall


def run_floor(url: str, requests: int, body_bytes: int, concurrency: int = 64) -> int:
    """(c) Bare aiohttp, no agent: ``requests`` posts of about ``body_bytes``, ``concurrency`` at a time."""
    import aiohttp

    async def go() -> int:
        body = floor_body(body_bytes)
        left = requests
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async def worker() -> int:
                nonlocal left
                sent = 0
                while left > 0:
                    left -= 1
                    async with session.post(url + "/chat/completions", data=body,
                                            headers={"Content-Type": "application/json"}) as r:
                        orjson.loads(await r.read())
                    sent += 1
                return sent

            return sum(await asyncio.gather(*(worker() for _ in range(concurrency))))

    return asyncio.run(go())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=500)
    ap.add_argument("--latency-ms", type=float, default=100.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--skip-sequential", action="store_true", help="skip (a); ratios then use c=1")
    ap.add_argument("--no-vlm", action="store_true", help="no VLM role: text requests only (no views to encode)")
    ap.add_argument("--skip-openai", action="store_true", help="skip the run with the official openai client")
    args = ap.parse_args()

    ctx = mp.get_context("spawn")
    port_q: mp.Queue = ctx.Queue()
    server = ctx.Process(target=_server_main, args=(port_q, args.latency_ms / 1000), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{port_q.get(timeout=30)}/v1"
    tmp = Path(tempfile.mkdtemp(prefix="reallod-bench-"))
    rows = []
    top = max(args.concurrency)
    try:
        src, cfg = _write_inputs(tmp, args.tasks, url, top, vlm=not args.no_vlm)
        _warm_up(src, cfg)  # imports and first connections are not part of any measurement

        plan = ([("(a) one at a time", None, cfg)] if not args.skip_sequential else []) + \
            [(f"(b) runner c={c}", c, cfg) for c in args.concurrency] + \
            ([(f"(b) c={top}, openai client", top, tmp / "bench-openai.yaml")] if not args.skip_openai else [])
        body_bytes = 0
        for label, c, config in plan:
            work = tmp / f"run{len(rows)}"
            work.mkdir()
            before = _server_stats(url)
            cpu0, t0 = _cpu(), time.perf_counter()
            n, requests = run_sequential(src, config, work / "out.jsonl") if c is None else \
                run_ours(src, config, work / "out.jsonl", c)
            wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
            after = _server_stats(url)
            if label == f"(b) runner c={top}":
                body_bytes = _mean_body(before, after)
            rows.append((label, n, requests, wall, cpu))
            _print_row(label, n, requests, wall, cpu)
        label = f"(c) HTTP floor c={top}"
        requests = next(r[2] for r in rows if r[0] == f"(b) runner c={top}")
        before = _server_stats(url)
        cpu0, t0 = _cpu(), time.perf_counter()
        run_floor(url, requests, body_bytes, top)
        wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
        floor = (label, 0, requests, wall, cpu)
        _print_row(f"{label} (bare aiohttp, {_mean_body(before, _server_stats(url))} B bodies, as (b)'s mean "
                   f"{body_bytes} B)", 0, requests, wall, cpu)
    finally:
        server.terminate()
        server.join(5)
        shutil.rmtree(tmp, ignore_errors=True)

    base_label, base_n, _, base_wall, _ = rows[0]
    base_rate = base_n / base_wall
    print(f"\nlatency {args.latency_ms:g} ms per request, {args.tasks} tasks"
          f"{', no VLM' if args.no_vlm else ', with a VLM role (JPEG views)'}; ratios against {base_label.strip()}:")
    for label, n, requests, wall, cpu in rows:
        print(f"  {label:28s} {n / wall / base_rate:6.1f}x   CPU {100 * cpu / wall:4.1f}% of wall, "
              f"{1000 * cpu / max(requests, 1):.3f} ms a request ({100 * cpu / max(requests, 1) / (args.latency_ms / 1000):.2f}% of "
              "its latency)")
    label, _, requests, wall, cpu = floor
    print(f"  {label:28s}          CPU {100 * cpu / wall:4.1f}% of its own (shorter) wall, {1000 * cpu / requests:.3f} "
          "ms a request: the HTTP client alone, no agent")
    ours = next((r for r in rows if r[0] == f"(b) runner c={top}"), None)
    if not args.skip_sequential and ours is not None:
        _, n, requests, wall, cpu = ours
        speed = n / wall / base_rate
        share, floor_of_wall = cpu / wall, floor_share(floor[4], wall)
        print(f"targets: c={top} >= {TARGET_SPEEDUP:g}x (a): {speed:.1f}x {'met' if speed >= TARGET_SPEEDUP else 'NOT met'}; "
              f"agent CPU < {100 * TARGET_CPU_SHARE:g}% of wall at c={top}: {100 * share:.1f}% "
              f"{'met' if share < TARGET_CPU_SHARE else 'NOT met'} (the HTTP floor's CPU for the same requests: "
              f"{100 * floor_of_wall:.1f}% of this run's wall; per request {100 * cpu / requests / (args.latency_ms / 1000):.2f}% "
              "of its latency)")
    sys.stdout.flush()


def _print_row(label: str, n: int, requests: int, wall: float, cpu: float) -> None:
    tasks = f"{n} tasks, " if n else ""
    rate = f"{n / wall:7.2f} tasks/s  " if n else ""
    print(f"{label:28s} {tasks}{requests} requests: {wall:7.2f} s  {rate}agent CPU {cpu:6.2f} s "
          f"({100 * cpu / wall:4.1f}% of wall, {1000 * cpu / max(requests, 1):.3f} ms per request)", flush=True)


def _mean_body(before: dict[str, int], after: dict[str, int]) -> int:
    """Mean request body the server received between two of its /stats answers, in bytes."""
    return (after["body_bytes"] - before["body_bytes"]) // max(after["requests"] - before["requests"], 1)


def _server_stats(url: str) -> dict[str, int]:
    import urllib.request

    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=10) as r:
        return orjson.loads(r.read())

if __name__ == "__main__":
    main()
