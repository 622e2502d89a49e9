"""Batch plans, packing, the LR schedule and process placement: the parts of the training loop
that are plain functions."""

from __future__ import annotations

import math

import pytest
import torch

from xwin.core.errors import ConfigError
from xwin.data.templating import IGNORE_INDEX, TokenizedSample
from xwin.models.loading import load_causal_lm
from xwin.train.data import (
    BatchSchedule,
    PackedSftCollator,
    eval_rank_batches,
    pack_rows,
    split_train_eval,
)
from xwin.train.deepspeed_setup import lr_multiplier
from xwin.train.launch import locate_process

LENGTHS = [5, 40, 12, 33, 7, 64, 20, 3, 18, 50, 9, 27, 31, 14, 60, 8, 22, 45, 11, 6]


@pytest.mark.parametrize("mode", ["length_grouped", "random", "packed"])
def test_every_rank_gets_the_same_number_of_batches_and_no_example_twice(mode):
    plan = BatchSchedule(LENGTHS, micro_batch_size=2, world_size=2, mode=mode, max_length=64, seed=3)
    per_rank = [plan.rank_batches(0, r) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) > 0
    seen = [i for batches in per_rank for batch in batches for row in batch for i in row]
    assert len(seen) == len(set(seen))
    assert all(len(batch) == 2 for batches in per_rank for batch in batches)


def test_plans_are_reproducible_per_seed_and_epoch():
    plan = BatchSchedule(LENGTHS, micro_batch_size=2, world_size=2, seed=3)
    assert plan.rank_batches(1, 0) == BatchSchedule(LENGTHS, 2, 2, seed=3).rank_batches(1, 0)
    assert plan.rank_batches(0, 0) != plan.rank_batches(1, 0)


def test_packed_rows_fit_max_length_and_hold_every_example_once():
    rows = pack_rows(LENGTHS, max_length=64, seed=0)
    assert sorted(i for row in rows for i in row) == list(range(len(LENGTHS)))
    assert all(sum(LENGTHS[i] for i in row) <= 64 for row in rows)
    assert len(rows) < len(LENGTHS) / 2  # it actually packs
    assert math.ceil(sum(LENGTHS) / 64) <= len(rows)


def test_eval_batches_cover_each_example_once_with_equal_counts_per_rank():
    per_rank = [eval_rank_batches(7, 2, 2, r) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 2
    real = sorted(i for batches in per_rank for b in batches for i in b if i >= 0)
    assert real == list(range(7))


def test_split_train_eval_is_disjoint_and_keeps_one_eval_example():
    train, held_out = split_train_eval(10, 0.01, seed=1)
    assert len(held_out) == 1 and not set(train) & set(held_out) and len(train) == 9
    assert split_train_eval(10, 0.0, seed=1) == (list(range(10)), [])


def test_packed_rows_keep_attention_inside_each_conversation(tiny_model_dir):
    """Logits of two samples packed in one row equal those of each sample alone."""
    model = load_causal_lm(tiny_model_dir).eval()
    a = TokenizedSample([1, 500, 600, 700, 2], [IGNORE_INDEX, 500, 600, 700, 2])
    b = TokenizedSample([1, 800, 900, 2], [IGNORE_INDEX, IGNORE_INDEX, 900, 2])
    batch = PackedSftCollator(pad_token_id=2)([[a, b], [b]])
    assert batch["labels"][0].tolist()[5] == IGNORE_INDEX  # b's first token is no target of a
    assert batch["attention_mask"].tolist() == [[1] * 9, [1] * 4 + [0] * 5]
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone_a = model(input_ids=torch.tensor([a.input_ids]), use_cache=False).logits
        alone_b = model(input_ids=torch.tensor([b.input_ids]), use_cache=False).logits
    torch.testing.assert_close(packed[0, :5], alone_a[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[0, 5:9], alone_b[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[1, :4], alone_b[0], atol=1e-5, rtol=1e-5)


def test_lr_schedule_warms_up_then_follows_a_cosine_to_the_floor():
    assert lr_multiplier(0, 100, 4, "cosine", 0.0) == pytest.approx(1 / 5)
    assert lr_multiplier(3, 100, 4, "cosine", 0.0) == pytest.approx(4 / 5)
    assert lr_multiplier(4, 100, 4, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_multiplier(52, 100, 4, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_multiplier(100, 100, 4, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_multiplier(52, 100, 4, "linear", 0.0) == pytest.approx(0.5)
    assert lr_multiplier(90, 100, 0, "constant", 0.0) == 1.0


def test_a_launcher_worker_keeps_the_rank_it_was_given():
    plan = locate_process({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                           "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"})
    assert (plan.rank, plan.world_size, plan.local_rank, plan.node_rank, plan.nnodes) == (3, 4, 1, 1, 2)
    assert not plan.spawn_workers and not plan.is_main and not plan.is_node_leader


def test_an_indexed_job_pod_with_one_process_per_node_is_the_worker():
    plan = locate_process({"JOB_COMPLETION_INDEX": "2", "XWIN_NNODES": "3", "MASTER_ADDR": "xwin-sft-0.xwin",
                           "MASTER_PORT": "29500"})
    assert (plan.rank, plan.world_size, plan.node_rank, plan.master_addr) == (2, 3, 2, "xwin-sft-0.xwin")
    assert not plan.spawn_workers


def test_an_indexed_job_pod_with_several_gpus_launches_its_workers():
    plan = locate_process({"JOB_COMPLETION_INDEX": "1", "XWIN_NNODES": "2", "XWIN_NPROC_PER_NODE": "8",
                           "MASTER_ADDR": "pod-0", "MASTER_PORT": "29500"})
    assert plan.spawn_workers and plan.world_size == 16 and plan.rank == 8 and plan.node_rank == 1


def test_bad_placement_is_a_config_error():
    with pytest.raises(ConfigError, match="JOB_COMPLETION_INDEX"):
        locate_process({"JOB_COMPLETION_INDEX": "3", "XWIN_NNODES": "2", "MASTER_ADDR": "x"})
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        locate_process({"JOB_COMPLETION_INDEX": "0", "XWIN_NNODES": "2"})
    with pytest.raises(ConfigError, match="RANK"):
        locate_process({"RANK": "2", "WORLD_SIZE": "2"})


def test_alone_is_rank_zero_of_one():
    plan = locate_process({})
    assert (plan.rank, plan.world_size, plan.spawn_workers) == (0, 1, False)
