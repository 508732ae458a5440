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

Decisions are a fixed function of the request, so every configuration does the same work
(about 60% of raw expressions judged correct at once, the rest rewritten or checked with the VLM).
Printed: wall time, tasks/s, ratio to (a), agent CPU time (user + system of this process, all its
threads) as a share of wall time and per request. Targets: c=64 at least 40x (a); agent CPU time
under 5% of wall time.

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
    tasks = json.loads((EXAMPLES / "tasks.json").read_text())
    with open(folder / "tasks.jsonl", "w") as f:
        for i in range(n):
            t = dict(tasks[i % len(tasks)])
            t["raw_expression"] = f"{t['raw_expression']} (variant {i // len(tasks)})"
            f.write(json.dumps(t) + "\n")
    role = f"{{backend: openai, model: bench-llm, base_url: '{url}', timeout_s: 60, max_tokens: 128}}"
    vlm_role = f"{{backend: openai, model: bench-vlm, base_url: '{url}', timeout_s: 60, max_tokens: 128}}" \
        if vlm else "null"
    cfg = folder / "bench.yaml"
    cfg.write_text(f"name: bench\nmax_cycles: 3\nconcurrency: {concurrency}\n"
                   "retry: {max_attempts: 3, backoff_s: 0.1, max_backoff_s: 1.0}\n"
                   f"roles:\n  reflector: {role}\n  planner: {role}\n  rewriter: {role}\n  vlm: {vlm_role}\n")
    return folder / "tasks.jsonl", cfg


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------------------ the two ways


def _warm_up(src: Path, cfg: Path) -> None:
    from reallod.agent.config import build_roles, load_agent_config

    roles = build_roles(load_agent_config(cfg))

    async def one_call() -> None:
        try:
            await roles.reflector.backend.complete([{"role": "user", "content": "warm up"}])
        finally:
            await roles.aclose()

    asyncio.run(one_call())
    import reallod.agent.runner  # noqa: F401


def run_sequential(src: Path, cfg: Path, out: Path) -> tuple[int, int]:
    """(a) The published loop: one task at a time, results in memory, output written at the end."""
    from reallod.agent.assemble import assemble
    from reallod.agent.config import build_roles, load_agent_config
    from reallod.agent.images import ImageLoader
    from reallod.agent.inputs import iter_tasks
    from reallod.agent.runner import run_one

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
    from reallod.agent.runner import RealignOptions, realign

    run = realign(RealignOptions(input=src, config=str(cfg), out=out, images=EXAMPLES / "images",
                                 concurrency=concurrency, cache=out.parent / "cache.sqlite"))
    return run.summary.tasks, run.info["requests"]["sent"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=500)
    ap.add_argument("--latency-ms", type=float, default=100.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--skip-sequential", action="store_true", help="skip (a); ratios then use c=1")
    ap.add_argument("--no-vlm", action="store_true", help="no VLM role: text requests only (no views to encode)")
    args = ap.parse_args()

    ctx = mp.get_context("spawn")
    port_q: mp.Queue = ctx.Queue()
    server = ctx.Process(target=_server_main, args=(port_q, args.latency_ms / 1000), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{port_q.get(timeout=30)}/v1"
    tmp = Path(tempfile.mkdtemp(prefix="reallod-bench-"))
    rows = []
    try:
        src, cfg = _write_inputs(tmp, args.tasks, url, max(args.concurrency), vlm=not args.no_vlm)
        _warm_up(src, cfg)  # imports and first connections are not part of any measurement

        plan = ([("(a) one at a time", None)] if not args.skip_sequential else []) + \
            [(f"(b) runner c={c}", c) for c in args.concurrency]
        for label, c in plan:
            work = tmp / (label.split()[0].strip("()") + (str(c) if c else ""))
            work.mkdir()
            cpu0, t0 = _cpu(), time.perf_counter()
            n, requests = run_sequential(src, cfg, work / "out.jsonl") if c is None else \
                run_ours(src, cfg, work / "out.jsonl", c)
            wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
            rows.append((label, n, requests, wall, cpu))
            print(f"{label:22s} {n} tasks, {requests} requests: {wall:7.2f} s  {n / wall:7.2f} tasks/s  "
                  f"agent CPU {cpu:6.2f} s ({100 * cpu / wall:4.1f}% of wall, {1000 * cpu / max(requests, 1):.2f} ms "
                  "per request)", flush=True)
    finally:
        server.terminate()
        server.join(5)
        shutil.rmtree(tmp, ignore_errors=True)

    base_label, base_n, _, base_wall, _ = rows[0]
    base_rate = base_n / base_wall
    print(f"\nlatency {args.latency_ms:g} ms per request, {args.tasks} tasks"
          f"{', no VLM' if args.no_vlm else ', with a VLM role (PNG views)'}; ratios against {base_label.strip()}:")
    for label, n, _, wall, cpu in rows:
        print(f"  {label:22s} {n / wall / base_rate:6.1f}x   CPU {100 * cpu / wall:4.1f}% of wall")
    if not args.skip_sequential:
        best = [r for r in rows if r[0].endswith("c=64")]
        if best:
            _, n, _, wall, cpu = best[0]
            speed = n / wall / base_rate
            print(f"targets: c=64 >= {TARGET_SPEEDUP:g}x (a): {speed:.1f}x {'met' if speed >= TARGET_SPEEDUP else 'NOT met'}; "
                  f"agent CPU < {100 * TARGET_CPU_SHARE:g}% of wall: "
                  + ", ".join(f"{r[0].split()[-1]} {100 * r[4] / r[3]:.1f}%" for r in rows))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
