"""The launcher's environment → this process's place and device."""

from __future__ import annotations

import pytest

from reallod.errors import ConfigError
from reallod.runs.launch import Place, launch_place, process_device


def test_alone_is_rank_zero_of_one():
    assert launch_place({}) == Place() and launch_place({"WORLD_SIZE": "1", "RANK": "0"}).is_main


def test_each_name_is_taken_by_exactly_one_process():
    names = [f"part{k // 10}/img{k}.jpg" for k in range(300)]
    shares = [[n for n in names if Place(r, 3).takes(n)] for r in range(3)]
    assert sorted(n for share in shares for n in share) == sorted(names) and all(60 < len(s) < 140 for s in shares)
    assert all(Place().takes(n) for n in names)


def test_torchrun_and_accelerate_variables():
    assert launch_place({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == Place(3, 4, 1)
    assert launch_place({"WORLD_SIZE": "2", "RANK": "1"}) == Place(1, 2, 1)  # no LOCAL_RANK: one machine


@pytest.mark.parametrize(("env", "named"), [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two'"),
    ({"WORLD_SIZE": "2", "RANK": "-1"}, "RANK='-1'"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "x"}, "LOCAL_RANK='x'"),
])
def test_a_bad_variable_is_named(env, named):
    with pytest.raises(ConfigError, match=named):
        launch_place(env)


def test_device_of_each_process():
    assert process_device("cuda:3", 1, 2) == "cuda:3"  # given an index: kept
    assert process_device("cpu", 1, 2) == "cpu"
    assert process_device(None, 0, 1) is None  # one process: the loader's default
    import torch

    if not torch.cuda.is_available():
        assert process_device(None, 1, 2) is None and process_device("cuda", 1, 2) == "cuda"
