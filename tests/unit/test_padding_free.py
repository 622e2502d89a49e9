"""Padding-free pair batches (`padding_free: true` for rm and dpo) on the tiny model: the row
layout against hand-written positions, per-sequence sums against hand-summed values, and the
numbers that matter (each reply's summed log-probs, each reward, a DPO and an RM step's loss and
gradients, reference log-probs computed the precompute way) equal to the padded path's within
1e-5 in float32; and the combinations that cannot work refused with a clear error."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

from xwin.core.errors import UserError
from xwin.core.net import free_port
from xwin.data.templating import PromptReplySample
from xwin.models.reward import RewardModel
from xwin.train.dpo import PrecomputedReference, compute_reference_logps, make_dpo_step, reply_logps
from xwin.train.dpo_config import DpoConfig
from xwin.train.launch import ProcessPlace
from xwin.train.pairs import (
    PaddingFreePairCollator,
    PairCollator,
    PairExample,
    check_padding_free,
    pair_collator,
    sequence_sums,
)
from xwin.train.rm import make_rm_step, rewards_of
from xwin.train.rm_config import RmConfig
from xwin.train.sft_config import SftConfig

# (context + reply ids, context length): every length differs, so padding is real in the padded
# layout and a boundary off by one shifts a sum
CHOSEN = [([5, 9, 14, 30, 31, 32], 3), ([7, 8, 40, 41], 2), ([11, 12, 13, 70, 71], 4)]
REJECTED = [([5, 9, 14, 50], 3), ([7, 8, 60, 61, 62, 63, 64], 2), ([11, 12, 13, 80, 81, 82, 83, 84, 85], 3)]
MARGINS = [0.5, None, 2.0]
TOLERANCE = 1e-5


def make_pairs() -> list[PairExample]:
    return [PairExample(i, PromptReplySample(c, pc), PromptReplySample(r, pr), m)
            for i, ((c, pc), (r, pr), m) in enumerate(zip(CHOSEN, REJECTED, MARGINS))]


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request, tiny_model_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                attn_implementation=request.param).eval()


@pytest.fixture(scope="module")
def reward_model(tiny_model_dir):
    torch.manual_seed(0)
    return RewardModel.from_language_model(tiny_model_dir).eval()


@pytest.fixture(scope="module")
def batches():
    pairs = make_pairs()
    return PairCollator(pad_token_id=0)(pairs), PaddingFreePairCollator()(pairs)


def reply_logps_alone(model, ids: list[int], context: int) -> float:
    """Summed reply log-probs from a forward over that sequence alone (no batch at all)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].log_softmax(-1)
    return sum(logits[t - 1, ids[t]].item() for t in range(context, len(ids)))


# ---- layout


def test_a_micro_batch_becomes_one_row_chosen_first_with_positions_per_sequence(batches):
    _, row = batches
    assert row["input_ids"].tolist() == [[5, 9, 14, 30, 31, 32, 7, 8, 40, 41, 11, 12, 13, 70, 71,
                                          5, 9, 14, 50, 7, 8, 60, 61, 62, 63, 64, 11, 12, 13, 80, 81, 82, 83, 84, 85]]
    assert row["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 0, 1, 2, 3, 4,
                                             0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6, 7, 8]]
    assert row["cu_seqlens"].tolist() == [0, 6, 10, 15, 19, 26, 35]
    assert row["reply_mask"].tolist() == [[0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 1,
                                           0, 0, 0, 1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1]]
    assert row["attention_mask"].tolist() == [[1] * 35]  # no pad token anywhere
    assert row["pair_index"].tolist() == [0, 1, 2]
    assert row["score_margin"][[0, 2]].tolist() == [0.5, 2.0] and math.isnan(row["score_margin"][1])


def test_the_row_holds_exactly_the_padded_batch_s_real_tokens(batches):
    padded, row = batches
    real = padded["attention_mask"].bool()
    assert row["input_ids"][0].tolist() == padded["input_ids"][real].tolist()
    assert row["attention_mask"].sum() == padded["attention_mask"].sum()  # the loop's token count
    starts = row["cu_seqlens"][:-1]
    assert (row["position_ids"][0, starts] == 0).all()


def test_a_sequence_s_first_token_is_never_a_reply_target():
    # a reply with no context at all: its first token would be predicted from the previous sequence
    pair = PairExample(0, PromptReplySample([40, 41, 42], 0), PromptReplySample([50, 51], 0))
    row = PaddingFreePairCollator()([pair])
    assert row["reply_mask"].tolist() == [[0, 1, 1, 0, 1]]


def test_pair_collator_picks_the_layout():
    assert isinstance(pair_collator(3, padding_free=True), PaddingFreePairCollator)
    assert pair_collator(3, padding_free=False) == PairCollator(3)


def test_sequence_sums_adds_each_sequence_s_positions_and_passes_gradient():
    values = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 100.0], requires_grad=True)
    sums = sequence_sums(values, torch.tensor([0, 3, 5, 6]))
    assert sums.tolist() == [6.0, 30.0, 100.0]
    (sums * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert values.grad.tolist() == [1.0, 1.0, 1.0, 2.0, 2.0, 3.0]


# ---- the numbers: padding-free equals padded


def test_reply_logps_equal_the_padded_path_and_each_sequence_alone(model, batches):
    padded, row = batches
    with torch.no_grad():
        sums_padded, counts_padded = reply_logps(model, padded)
        sums_free, counts_free = reply_logps(model, row)
    alone = [reply_logps_alone(model, ids, context) for ids, context in CHOSEN + REJECTED]
    assert counts_free.tolist() == counts_padded.tolist() == [3, 2, 1, 1, 5, 6]
    assert (sums_free - sums_padded).abs().max().item() < TOLERANCE
    assert sums_free.tolist() == pytest.approx(alone, abs=TOLERANCE)
    # the row's sequences really are cut apart: one forward over the unmarked row differs
    with torch.no_grad():
        joined = model(input_ids=row["input_ids"], use_cache=False).logits
        free = model(input_ids=row["input_ids"], position_ids=row["position_ids"], use_cache=False).logits
    assert (joined[0, 6:] - free[0, 6:]).abs().max().item() > 1e-2


@pytest.mark.parametrize("settings", [{"loss_type": "sigmoid", "beta": 0.5}, {"loss_type": "ipo", "beta": 0.2},
                                      {"loss_type": "simpo", "rpo_alpha": 0.5}])
def test_a_dpo_step_gives_the_padded_loss_metrics_and_gradients(model, batches, settings):
    config = DpoConfig(**settings)
    table = torch.tensor([-3.0, -2.5, -1.0, -4.0, -7.0, -8.5])  # reference log-probs [2n], fixed

    def reference(batch):
        return table.clone()

    results = []
    for batch in batches:
        model.zero_grad()
        loss, metrics = make_dpo_step(config, reference)(model, batch)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((loss.item(), {k: float(v) for k, v in metrics.items()}, grads))
    (loss_p, metrics_p, grads_p), (loss_f, metrics_f, grads_f) = results
    assert abs(loss_f - loss_p) < TOLERANCE
    assert metrics_f == pytest.approx(metrics_p, abs=TOLERANCE)
    assert max((a - b).abs().max().item() for a, b in zip(grads_p, grads_f)) < TOLERANCE
    model.zero_grad()


def test_rewards_and_an_rm_step_equal_the_padded_path(reward_model, batches):
    padded, row = batches
    with torch.no_grad():
        chosen_p, rejected_p = rewards_of(reward_model, padded)
        chosen_f, rejected_f = rewards_of(reward_model, row)
        alone = [reward_model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)).item()
                 for ids, _ in CHOSEN + REJECTED]
    assert (torch.cat([chosen_f, rejected_f]) - torch.cat([chosen_p, rejected_p])).abs().max().item() < TOLERANCE
    assert torch.cat([chosen_f, rejected_f]).tolist() == pytest.approx(alone, abs=TOLERANCE)
    step = make_rm_step(use_score_margin=True)
    losses = []
    for batch in batches:
        reward_model.zero_grad()
        loss, _ = step(reward_model, batch)
        loss.backward()
        losses.append((loss.item(), reward_model.value_head.weight.grad.clone()))
    assert abs(losses[0][0] - losses[1][0]) < TOLERANCE
    assert (losses[0][1] - losses[1][1]).abs().max().item() < TOLERANCE
    reward_model.zero_grad()


def test_reward_model_refuses_a_padding_free_row_with_a_mask(reward_model, batches):
    _, row = batches
    with pytest.raises(ValueError, match="one row with position_ids and no attention_mask"):
        reward_model(row["input_ids"], row["attention_mask"], position_ids=row["position_ids"],
                     cu_seqlens=row["cu_seqlens"])


@pytest.fixture
def one_process_group():
    """A real gloo group of one process: what the precompute path collects its values over."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield ProcessPlace(rank=0, world_size=1, local_rank=0, local_world_size=1, node_rank=0, nnodes=1,
                       master_addr="127.0.0.1", master_port=0)
    dist.destroy_process_group()


def test_precomputed_reference_logps_equal_the_padded_ones(model, one_process_group, tmp_path):
    pairs = make_pairs()
    cpu = torch.device("cpu")
    padded = compute_reference_logps(model, pairs, PairCollator(0), 2, one_process_group, cpu)
    reference = PrecomputedReference(tmp_path / "ref.pt", pairs, PaddingFreePairCollator(), 2, one_process_group, cpu)
    reference.prepare(model)
    assert reference.table.shape == (3, 2)
    assert (reference.table - padded).abs().max().item() < TOLERANCE
    # looked up for a padding-free micro-batch of pairs 2 and 0: chosen first, then rejected
    row = PaddingFreePairCollator()([pairs[2], pairs[0]])
    assert reference(row).tolist() == [reference.table[2, 0].item(), reference.table[0, 0].item(),
                                       reference.table[2, 1].item(), reference.table[0, 1].item()]


# ---- what is refused


@pytest.mark.parametrize("config", [RmConfig, DpoConfig])
def test_pair_stages_refuse_packed_batching_and_name_padding_free(config):
    with pytest.raises(ValidationError, match="for rm and dpo set padding_free: true"):
        config(batching="packed")
    assert config(padding_free=True).padding_free and not config().padding_free


def test_padding_free_is_no_sft_setting():
    with pytest.raises(ValidationError, match="padding_free"):
        SftConfig(padding_free=True)


def test_a_model_that_cannot_keep_sequences_apart_is_refused(tiny_model_dir):
    from transformers import MambaConfig, MambaForCausalLM

    check_padding_free(AutoModelForCausalLM.from_pretrained(tiny_model_dir), "dpo")  # Llama: fine
    # a state-space model carries its state from one sequence of the row into the next
    mamba = MambaForCausalLM(MambaConfig(vocab_size=64, hidden_size=16, state_size=4, num_hidden_layers=1))
    with pytest.raises(UserError, match="model type 'mamba' does not build its attention masks"):
        check_padding_free(mamba, "dpo")
