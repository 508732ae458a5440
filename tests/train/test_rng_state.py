"""The RNG state a checkpoint keeps, and a resume on fewer GPUs than the run had (no GPU needed: the
CUDA calls are recorded, not made)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from reallod.train import checkpoint as C


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CUDA build with ``visible`` devices, this process on ``device``; records what is set."""
    calls: dict = {"set": [], "visible": 1, "device": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: calls["device"])
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([calls["device"]]))

    def set_all(states):  # torch's: one per saved state, by index into the visible devices
        for i, _ in enumerate(states):
            if i >= calls["visible"]:
                raise IndexError("list index out of range")
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": calls["set"].append(int(state[0])))
    return calls


def test_the_cpu_generators_round_trip():
    state = C.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    C.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_each_process_keeps_and_restores_its_own_device(fake_cuda):
    fake_cuda["device"] = 3
    state = C.rng_state()
    assert int(state["cuda"][0]) == 3  # its own device's state, not the list of every visible one
    fake_cuda["device"], fake_cuda["visible"] = 0, 1  # resumed with one GPU visible
    C.set_rng_state(state)
    assert fake_cuda["set"] == [3]


def test_a_checkpoint_with_every_devices_state_resumes_on_fewer_gpus(fake_cuda):
    """Earlier checkpoints kept get_rng_state_all(): an 8-GPU run resumed on one failed with IndexError."""
    state = {**C.rng_state(), "cuda": [torch.tensor([i]) for i in range(8)]}
    fake_cuda["device"], fake_cuda["visible"] = 0, 1
    C.set_rng_state(state)
    fake_cuda["device"] = 5
    C.set_rng_state(state)
    fake_cuda["device"] = 9  # a device the run did not have: its generator keeps its seed
    C.set_rng_state(state)
    assert fake_cuda["set"] == [0, 5]
