"""AdamW groups (lr multipliers, no decay on norms/biases/position embeddings) and the lr schedule."""

from __future__ import annotations

import pytest
import torch

from reallod.model.tiny import build_tiny_detector
from reallod.train.config import OptimConfig, ScheduleConfig
from reallod.train.optim import (
    build_optimizer,
    build_scheduler,
    freeze_zero_lr,
    lr_factor,
    param_groups,
    scaled_lr,
)


@pytest.fixture(scope="module")
def model():
    return build_tiny_detector(seed=0, max_text_len=64)


def test_groups_split_parts_and_decay(model):
    cfg = OptimConfig(lr=1e-4, weight_decay=0.05, backbone_lr_mult=0.1, text_lr_mult=0.2)
    groups = {g["name"]: g for g in param_groups(model, cfg, cfg.lr)}
    assert set(groups) == {"other", "other.no_decay", "backbone", "backbone.no_decay", "text", "text.no_decay"}
    assert groups["backbone"]["lr"] == pytest.approx(1e-5) and groups["text"]["lr"] == pytest.approx(2e-5)
    assert groups["other"]["lr"] == 1e-4 and groups["other"]["weight_decay"] == 0.05
    assert all(groups[n]["weight_decay"] == 0.0 for n in groups if n.endswith("no_decay"))
    names = {n: g for g in groups.values() for n in g["param_names"]}
    assert len(names) == sum(1 for p in model.parameters() if p.requires_grad)  # each parameter exactly once
    assert names["model.text_backbone.embeddings.position_embeddings.weight"]["name"] == "text.no_decay"
    assert names["model.text_backbone.embeddings.LayerNorm.weight"]["name"] == "text.no_decay"
    assert names["model.text_backbone.embeddings.word_embeddings.weight"]["name"] == "text"
    assert names["model.encoder.layers.0.deformable_layer.self_attn_layer_norm.weight"]["name"] == "other.no_decay"
    assert names["model.encoder.layers.0.deformable_layer.fc1.bias"]["name"] == "other.no_decay"
    assert names["model.encoder.layers.0.deformable_layer.fc1.weight"]["name"] == "other"
    table = [n for n in names if "relative_position_bias_table" in n]
    assert table and all(names[n]["name"] == "backbone.no_decay" for n in table)
    assert any(n.startswith("model.backbone.") and g["name"] == "backbone" for n, g in names.items())


def test_zero_multiplier_freezes_the_part():
    net = build_tiny_detector(seed=0, max_text_len=64)
    cfg = OptimConfig(text_lr_mult=0.0)
    assert freeze_zero_lr(net, cfg) == ["text"]
    opt = build_optimizer(net, cfg, 1e-3)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in in_opt for p in net.model.text_backbone.parameters())
    assert not any(p.requires_grad for p in net.model.text_backbone.parameters())


def test_warmup_then_step_decay():
    f = lambda s: lr_factor(s, warmup_steps=10, start_factor=0.1, milestone_steps=[30, 50], gamma=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(5) == pytest.approx(0.55) and f(10) == 1.0 and f(29) == 1.0
    assert f(30) == pytest.approx(0.1) and f(49) == pytest.approx(0.1) and f(50) == pytest.approx(0.01)
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=0.5)
    sched = build_scheduler(opt, ScheduleConfig(warmup_steps=4, warmup_start_factor=0.5, milestones=[2], gamma=0.1),
                            steps_per_epoch=5)
    seen = []
    for _ in range(12):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[:5] == pytest.approx([0.25, 0.3125, 0.375, 0.4375, 0.5])
    assert seen[9] == pytest.approx(0.5) and seen[10] == pytest.approx(0.05)  # after epoch 2 = step 10


def test_auto_scale_lr():
    cfg = OptimConfig(lr=2e-6, base_batch_size=64)
    assert scaled_lr(cfg, 16) == 2e-6
    assert scaled_lr(cfg, 16, auto_scale=True) == pytest.approx(5e-7)
    assert scaled_lr(OptimConfig(lr=1e-4, auto_scale_lr=True, base_batch_size=16), 32) == pytest.approx(2e-4)
