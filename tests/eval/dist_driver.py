"""Run by ``torchrun --nproc_per_node 2`` in the end-to-end test: the three benchmarks, sharded, in one launch.

argv: MODEL DATA_DIR OUT_DIR. Each benchmark's predictions and metrics go to OUT_DIR/<benchmark>.*
"""

from __future__ import annotations

import sys
from pathlib import Path

from reallod.eval.jobs import EvalJob, run_job
from reallod.eval.predict import ModelSpec, RunOptions, init_distributed
from reallod.model.inference import InferenceOptions


def jobs(model: str, data: Path, out: Path) -> list[EvalJob]:
    spec = ModelSpec(model, device="cpu")
    run = RunOptions(inference=InferenceOptions(mode="parallel", batch_size=2, topk=100), progress=False)
    return [
        EvalJob("omnilabel", data / "omnilabel" / "gt.json", model=spec, images=data / "omnilabel" / "images",
                out=out / "omnilabel.json", metrics_out=out / "omnilabel.metrics.json", run=run),
        EvalJob("d3", data / "d3" / "pkl", model=spec, images=data / "d3" / "images", out=out / "d3.json",
                metrics_out=out / "d3.metrics.json", run=run),
        EvalJob("ovdeval", data / "ovdeval" / "annotations", model=spec, images=data / "ovdeval" / "images",
                out=out / "ovdeval", metrics_out=out / "ovdeval.metrics.json", run=run),
    ]


def main() -> None:
    model, data, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    dist = init_distributed()
    try:
        for job in jobs(model, data, out):
            outcome = run_job(job, dist=dist)
            if dist.is_main:
                print(job.benchmark, outcome.processes, outcome.n_predictions, flush=True)
    finally:
        dist.close()


if __name__ == "__main__":
    main()
