"""The training losses against values worked out by hand in plain Python floats."""

from __future__ import annotations

import math

import pytest
import torch

from xwin.train.losses import (
    bradley_terry_loss,
    dpo_loss,
    reply_labels,
    sequence_logps,
    sft_loss,
    token_logps,
)

# one sequence of 4 positions over a vocabulary of 3
LOGITS = [[[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-0.5, 1.5, 0.0], [3.0, -2.0, 1.0]]]


def log_softmax_at(row: list[float], index: int) -> float:
    return row[index] - math.log(sum(math.exp(x) for x in row))


def test_sft_loss_averages_next_token_cross_entropy_over_labelled_positions():
    labels = [[-100, 2, -100, 1]]  # position 1 and 3 are targets, predicted from positions 0 and 2
    expected = -(log_softmax_at(LOGITS[0][0], 2) + log_softmax_at(LOGITS[0][2], 1)) / 2
    got = sft_loss(torch.tensor(LOGITS), torch.tensor(labels))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_sft_loss_averages_per_token_not_per_sequence():
    logits = torch.tensor(LOGITS * 2)
    labels = torch.tensor([[-100, 2, 0, 1], [-100, -100, -100, 1]])
    terms = [log_softmax_at(LOGITS[0][0], 2), log_softmax_at(LOGITS[0][1], 0), log_softmax_at(LOGITS[0][2], 1),
             log_softmax_at(LOGITS[0][2], 1)]
    assert sft_loss(logits, labels).item() == pytest.approx(-sum(terms) / 4, rel=1e-6)


def test_sft_loss_of_a_batch_without_targets_is_zero_not_nan():
    logits = torch.tensor(LOGITS, requires_grad=True)
    loss = sft_loss(logits, torch.full((1, 4), -100))
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph
    assert logits.grad is not None


def test_sequence_logps_sums_reply_token_log_probs_per_sequence():
    labels = torch.tensor([[-100, -100, 1, 0]])  # reply = tokens at positions 2 and 3
    expected = log_softmax_at(LOGITS[0][1], 1) + log_softmax_at(LOGITS[0][2], 0)
    assert sequence_logps(torch.tensor(LOGITS), labels).item() == pytest.approx(expected, rel=1e-6)
    per_token, counted = token_logps(torch.tensor(LOGITS), labels)
    assert counted.tolist() == [[False, True, True]]
    assert per_token[0, 0].item() == 0.0


def test_reply_labels_come_from_the_mask_even_where_ids_equal_the_pad_id():
    ids = torch.tensor([[5, 2, 7, 2, 2]])  # 2 = pad = end of turn; the reply's own 2 is kept
    mask = torch.tensor([[0, 0, 1, 1, 0]])
    assert reply_labels(ids, mask).tolist() == [[-100, -100, 7, 2, -100]]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_bradley_terry_loss_and_accuracy():
    chosen, rejected = [1.0, -0.5, 2.0], [0.0, 0.5, 2.0]
    expected = -sum(math.log(sigmoid(c - r)) for c, r in zip(chosen, rejected)) / 3
    loss, accuracy = bradley_terry_loss(torch.tensor(chosen), torch.tensor(rejected))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert accuracy.item() == pytest.approx(1 / 3)  # a tie is not a win


def test_bradley_terry_margin_is_subtracted_per_pair():
    chosen, rejected, margin = [1.0, 3.0], [0.0, 0.5], [0.5, 2.0]
    expected = -sum(math.log(sigmoid(c - r - m)) for c, r, m in zip(chosen, rejected, margin)) / 2
    loss, _ = bradley_terry_loss(torch.tensor(chosen), torch.tensor(rejected), torch.tensor(margin))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss_scalar, _ = bradley_terry_loss(torch.tensor(chosen), torch.tensor(rejected), 1.0)
    assert loss_scalar.item() == pytest.approx(
        -sum(math.log(sigmoid(c - r - 1.0)) for c, r in zip(chosen, rejected)) / 2, rel=1e-6)


PI_C, PI_R, REF_C, REF_R = [-10.0, -4.0], [-12.0, -3.0], [-11.0, -5.0], [-11.5, -2.5]


def test_dpo_sigmoid_loss_and_implicit_rewards():
    beta = 0.1
    loss, chosen, rejected = dpo_loss(*map(torch.tensor, (PI_C, PI_R, REF_C, REF_R)), beta=beta)
    expected = 0.0
    for pc, pr, rc, rr in zip(PI_C, PI_R, REF_C, REF_R):
        expected += -math.log(sigmoid(beta * ((pc - rc) - (pr - rr))))
    assert loss.item() == pytest.approx(expected / 2, rel=1e-6)
    assert chosen.tolist() == pytest.approx([beta * (1.0), beta * (1.0)])
    assert rejected.tolist() == pytest.approx([beta * (-0.5), beta * (-0.5)])


def test_dpo_label_smoothing_mixes_in_the_flipped_preference():
    beta, eps = 0.5, 0.2
    loss, _, _ = dpo_loss(*map(torch.tensor, (PI_C, PI_R, REF_C, REF_R)), beta=beta, label_smoothing=eps)
    expected = 0.0
    for pc, pr, rc, rr in zip(PI_C, PI_R, REF_C, REF_R):
        h = (pc - rc) - (pr - rr)
        expected += -(1 - eps) * math.log(sigmoid(beta * h)) - eps * math.log(sigmoid(-beta * h))
    assert loss.item() == pytest.approx(expected / 2, rel=1e-6)


def test_dpo_ipo_loss_is_squared_distance_to_half_inverse_beta():
    beta = 0.25
    loss, _, _ = dpo_loss(*map(torch.tensor, (PI_C, PI_R, REF_C, REF_R)), beta=beta, loss_type="ipo")
    expected = sum(((pc - rc) - (pr - rr) - 1 / (2 * beta)) ** 2 for pc, pr, rc, rr in zip(PI_C, PI_R, REF_C, REF_R))
    assert loss.item() == pytest.approx(expected / 2, rel=1e-6)


def test_dpo_starts_at_log_two_when_policy_equals_reference():
    logps = torch.tensor([-3.0, -7.0])
    loss, chosen, rejected = dpo_loss(logps, logps + 1, logps, logps + 1, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)
    assert chosen.abs().max().item() == 0.0 and rejected.abs().max().item() == 0.0


def test_dpo_rejects_unknown_loss_type_and_bad_beta():
    t = torch.zeros(1)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(t, t, t, t, beta=0.1, loss_type="hinge")
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(t, t, t, t, beta=0.0)
