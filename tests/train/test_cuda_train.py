"""Training on a CUDA device in bf16 (marked ``cuda``; skipped without one; ``benchmarks/gpu_check.sh``
runs them). The step itself is also run on the CPU (bf16 autocast there too), so the test's logic is
exercised on every machine; the CUDA run is what is still to be seen on the first GPU session."""

from __future__ import annotations

import math

import pytest
import torch

from reallod.model import token_prompt as P
from reallod.model.tiny import build_tiny_detector
from reallod.train.losses import install, training_loss

from .helpers import tiny_config


def needs_cuda(test):
    """Marked ``cuda`` (``pytest -m cuda``) and skipped, with the reason, where there is no device."""
    test = pytest.mark.skipif(not torch.cuda.is_available(),
                              reason="needs a CUDA device (torch.cuda.is_available() is False)")(test)
    return pytest.mark.cuda(test)


def fixed_batch(device: torch.device):
    """Three images, their prompts and one box each, fixed (the same batch every step)."""
    prompts = [[P.CLS_ID, 2000, P.DOT_ID, 2001, 2002, P.DOT_ID, 2003, P.DOT_ID, P.SEP_ID],
               [P.CLS_ID, 3000, 3001, P.DOT_ID, P.SEP_ID],
               [P.CLS_ID, 4000, P.DOT_ID, 4001, P.DOT_ID, P.SEP_ID]]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([p + [P.PAD_ID] * (width - len(p)) for p in prompts], device=device)
    boxes = [[0.3, 0.4, 0.2, 0.3], [0.6, 0.5, 0.4, 0.2], [0.5, 0.5, 0.3, 0.3]]
    targets = [{"class_labels": torch.tensor([c], device=device), "boxes": torch.tensor([b], device=device)}
               for c, b in zip([2, 0, 1], boxes, strict=True)]
    g = torch.Generator().manual_seed(0)
    inputs = dict(pixel_values=torch.randn(3, 3, 96, 96, generator=g).to(device),
                  pixel_mask=torch.ones(3, 96, 96, dtype=torch.long, device=device), input_ids=ids,
                  attention_mask=(ids != P.PAD_ID).long(), token_type_ids=torch.zeros_like(ids))
    return inputs, targets


def bf16_losses(device: torch.device, steps: int = 8) -> list[float]:
    """AdamW steps on one fixed batch, the forward pass under bf16 autocast (weights stay fp32)."""
    torch.manual_seed(0)
    model = build_tiny_detector(seed=0, max_text_len=32).to(device).train()
    model.config.auxiliary_loss = True
    install(model)
    inputs, targets = fixed_batch(device)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        optim.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(**inputs, labels=targets)
            loss, _ = training_loss(model.config, out, targets, inputs["input_ids"], inputs["attention_mask"])
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        losses.append(float(loss.detach()))
    return losses


def _assert_falls(losses: list[float]) -> None:
    assert all(math.isfinite(v) for v in losses), losses
    assert min(losses[-3:]) < losses[0], losses  # over-fitting one batch: the loss falls


def test_bf16_step_on_cpu_gives_a_finite_falling_loss():
    _assert_falls(bf16_losses(torch.device("cpu")))


@needs_cuda
def test_bf16_step_on_cuda_gives_a_finite_falling_loss():
    _assert_falls(bf16_losses(torch.device("cuda")))


@needs_cuda
def test_training_loop_in_bf16_on_cuda(tmp_path):
    """The real loop (accelerate, bf16 mixed precision) on the GPU: a few steps with finite losses."""
    from reallod.train.loop import train

    cfg = tiny_config(tmp_path / "shapes", ["train.mixed_precision=bf16", "schedule.max_steps=4",
                                            "schedule.epochs=1000"])
    result = train(cfg, tmp_path / "run")
    assert result.history and all(math.isfinite(r["loss"]) for r in result.history)
    assert max(r["peak_mem_mb"] for r in result.history) > 0  # CUDA's own counter, not the process RSS
