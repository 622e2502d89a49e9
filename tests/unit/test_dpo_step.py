"""The dpo stage's step function on the tiny model: which log-probs each loss gets (summed or
per token), that SimPO never asks for a reference, and what rpo_alpha adds."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from xwin.data.templating import PromptReplySample
from xwin.train.dpo import make_dpo_step
from xwin.train.dpo_config import DpoConfig
from xwin.train.pairs import PairCollator, PairExample

# (context + reply ids, context length): replies of different lengths, so padding and the
# per-token average both matter
CHOSEN = [([5, 9, 14, 30, 31, 32], 3), ([7, 8, 40, 41], 2)]
REJECTED = [([5, 9, 14, 50], 3), ([7, 8, 60, 61, 62, 63, 64], 2)]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def batch():
    pairs = [PairExample(i, PromptReplySample(c, pc), PromptReplySample(r, pr))
             for i, ((c, pc), (r, pr)) in enumerate(zip(CHOSEN, REJECTED))]
    return PairCollator(pad_token_id=0)(pairs)


def reply_logps_alone(model, ids: list[int], context: int) -> tuple[float, int]:
    """(summed log-probs, token count) of a reply, from a forward over that sequence alone."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
    total = sum(logits[t - 1, ids[t]].item() for t in range(context, len(ids)))
    return total, len(ids) - context


def never_called(batch):
    raise AssertionError("a reference-free loss asked for reference log-probs")


def test_simpo_step_uses_per_token_averages_and_no_reference(model, batch):
    config = DpoConfig(loss_type="simpo", beta=2.0, simpo_gamma=0.5)
    with torch.no_grad():
        loss, metrics = make_dpo_step(config, never_called)(model, batch)
    chosen = [reply_logps_alone(model, *c) for c in CHOSEN]
    rejected = [reply_logps_alone(model, *r) for r in REJECTED]
    avg_c = [s / n for s, n in chosen]
    avg_r = [s / n for s, n in rejected]
    expected = sum(math.log(1 + math.exp(-(2.0 * (c - r) - 0.5))) for c, r in zip(avg_c, avg_r)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    assert metrics["reward_chosen"].item() == pytest.approx(2.0 * sum(avg_c) / 2, rel=1e-4)
    assert metrics["reward_margin"].item() == pytest.approx(2.0 * (sum(avg_c) - sum(avg_r)) / 2, rel=1e-4)
    # logps_* stay summed log-probs whatever the loss
    assert metrics["logps_chosen"].item() == pytest.approx(sum(s for s, _ in chosen) / 2, rel=1e-4)
    assert "nll_chosen" not in metrics


def test_simpo_step_runs_without_any_reference_object(model, batch):
    loss, _ = make_dpo_step(DpoConfig(loss_type="simpo"), None)(model, batch)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.zero_grad()


@pytest.mark.parametrize("loss_type", ["sigmoid", "robust", "hinge", "ipo", "simpo"])
def test_rpo_alpha_adds_alpha_times_the_chosen_per_token_nll(model, batch, loss_type):
    def reference(b):  # the policy itself: h = 0
        with torch.no_grad():
            return torch.tensor([reply_logps_alone(model, *x)[0] for x in CHOSEN + REJECTED])

    base = {"loss_type": loss_type, "beta": 0.5}
    with torch.no_grad():
        without, _ = make_dpo_step(DpoConfig(**base), reference)(model, batch)
        zero, _ = make_dpo_step(DpoConfig(**base, rpo_alpha=0.0), reference)(model, batch)
        with_rpo, metrics = make_dpo_step(DpoConfig(**base, rpo_alpha=0.5), reference)(model, batch)
    nll = -sum(s / n for s, n in (reply_logps_alone(model, *c) for c in CHOSEN)) / 2
    assert metrics["nll_chosen"].item() == pytest.approx(nll, rel=1e-4)
    assert with_rpo.item() - without.item() == pytest.approx(0.5 * nll, rel=1e-4)
    assert zero.item() == pytest.approx(without.item(), rel=1e-6)
    if loss_type in ("sigmoid", "robust"):
        assert without.item() == pytest.approx(math.log(2), abs=1e-5)  # h = 0
