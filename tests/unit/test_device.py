"""The device policy (xwin.models.device): the CPU without CUDA, cuda:<local rank> with it, a
clear error for a local rank without a GPU; and every stage that runs a model places it there.
CUDA is simulated by patching torch.cuda's queries; "where the policy says" is checked by
pointing the policy at the meta device, which any machine has."""

from __future__ import annotations

import pytest
import torch

from xwin.core.errors import ConfigError
from xwin.models import device as policy
from xwin.models.device import model_device, select_device


@pytest.fixture
def four_gpus(monkeypatch) -> list[torch.device]:
    """torch reports 4 CUDA devices; returns the devices set_device was called with."""
    current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(torch.device(d)))
    return current


@pytest.fixture
def meta_policy(monkeypatch) -> None:
    monkeypatch.setattr(policy, "model_device", lambda local_rank=None: torch.device("meta"))


def test_without_cuda_every_rank_runs_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert model_device() == torch.device("cpu")
    assert model_device(5) == torch.device("cpu")


def test_with_cuda_the_local_rank_picks_the_gpu(four_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert model_device() == torch.device("cuda", 3)
    assert model_device(1) == torch.device("cuda", 1)  # an explicit rank wins over the environment
    monkeypatch.delenv("LOCAL_RANK")
    assert model_device() == torch.device("cuda", 0)  # a process no launcher started


def test_select_device_makes_the_gpu_current(four_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert select_device() == torch.device("cuda", 2)
    assert four_gpus == [torch.device("cuda", 2)]


def test_a_local_rank_without_a_gpu_is_a_clear_error(four_gpus, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "4")
    with pytest.raises(ConfigError, match=r"local rank 4 has no GPU: this process sees 4 CUDA device\(s\)"):
        model_device()
    monkeypatch.setenv("LOCAL_RANK", "first")
    with pytest.raises(ConfigError, match="LOCAL_RANK='first'"):
        model_device()


def test_trainers_join_on_the_policys_gpu(four_gpus, monkeypatch):
    """init_distributed (every trainer's start) makes cuda:<local rank> current before
    DeepSpeed, which then puts the model there, and picks nccl for it."""
    import deepspeed

    from xwin.train.launch import ProcessPlace, init_distributed

    backends = []
    monkeypatch.setattr(deepspeed, "init_distributed", lambda dist_backend, **_: backends.append(dist_backend))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "0")  # init_distributed exports them; monkeypatch restores them
    place = ProcessPlace(rank=5, world_size=8, local_rank=1, local_world_size=4, node_rank=1, nnodes=2,
                         master_addr="127.0.0.1", master_port=29500)
    assert init_distributed(place) == torch.device("cuda", 1)
    assert four_gpus == [torch.device("cuda", 1)] and backends == ["nccl"]


def test_the_reward_model_is_loaded_where_the_policy_says(meta_policy, tiny_model_dir, tokenizer, tmp_path):
    """score and eval's reward scoring load the reward model through load_reward_model."""
    from xwin.models.reward import RewardModel, load_reward_model

    RewardModel.from_language_model(tiny_model_dir).save(tmp_path, tokenizer)
    assert {p.device.type for p in load_reward_model(tmp_path).parameters()} == {"meta"}
    assert {p.device.type for p in load_reward_model(tmp_path, device="cpu").parameters()} == {"cpu"}


def test_the_hf_backend_generates_where_the_policy_says(meta_policy, tiny_model_dir):
    """The judge's answers and prepare's pairs generate through the engines; vLLM places itself."""
    from xwin.sampling.generation import EngineOptions
    from xwin.sampling.hf_backend import HfEngine

    engine = HfEngine(tiny_model_dir, EngineOptions(backend="hf", dtype="float32"))
    assert {p.device.type for p in engine.model.parameters()} == {"meta"}


@pytest.mark.parametrize(("cores", "expected"), [
    ({0, 1}, {"VLLM_CPU_OMP_THREADS_BIND": "0,1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}),
    ({2, 5, 7, 3}, {"VLLM_CPU_OMP_THREADS_BIND": "2,3,5,7", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}),
    (set(range(8)), {}),  # a bigger machine keeps vLLM's own binding (one core for the frontend)
])
def test_vllm_on_a_small_cpu_machine_computes_on_every_allowed_core(monkeypatch, cores, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(policy.os, "sched_getaffinity", lambda pid: cores)
    assert policy.vllm_cpu_env({}) == expected


@pytest.mark.parametrize("name", policy.VLLM_CPU_THREAD_SETTINGS)
def test_vllm_threading_already_chosen_in_the_environment_is_left_alone(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(policy.os, "sched_getaffinity", lambda pid: {0, 1})
    assert policy.vllm_cpu_env({name: "1"}) == {}


def test_vllm_on_a_gpu_gets_no_cpu_threading(four_gpus, monkeypatch):
    monkeypatch.setattr(policy.os, "sched_getaffinity", lambda pid: {0, 1})
    assert policy.vllm_cpu_env({}) == {}
