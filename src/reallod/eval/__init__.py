"""Benchmark evaluation: OmniLabel, D³ and OVDEval with their official protocols.

``omnilabel``, ``d3`` and ``ovdeval`` read each benchmark's ground truth and predictions and score
them; ``coco_ap`` holds the vectorised COCO matching and pooled curves, ``coco_tools`` the
pycocotools / faster-coco-eval runs; ``predict`` runs a Real-Model detector over a benchmark's
images (sharded under torchrun / accelerate launch) and ``jobs`` ties it together for the CLI.
"""
