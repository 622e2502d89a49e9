"""The training losses against values worked out by hand in plain Python floats."""

from __future__ import annotations

import math

import pytest
import torch

from xwin.train.losses import (
    bradley_terry_loss,
    dpo_loss,
    reply_labels,
    rpo_nll_loss,
    sequence_logps,
    sft_loss,
    simpo_loss,
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
        dpo_loss(t, t, t, t, beta=0.1, loss_type="kto_pair")
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(t, t, t, t, beta=0.0)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(t, t, t, t, beta=-0.1, loss_type="hinge")


# four pairs whose h = (pi_c - ref_c) - (pi_r - ref_r) is 1.5, 1.0, -2.5 and 6.0
PI_C4, PI_R4 = [-10.0, -4.5, -8.0, -2.0], [-12.0, -3.0, -7.0, -9.0]
REF_C4, REF_R4 = [-11.0, -5.0, -6.0, -3.0], [-11.5, -2.5, -7.5, -4.0]
H4 = [1.5, 1.0, -2.5, 6.0]


def dpo4(requires_grad: bool = False, **kwargs):
    """dpo_loss on the four pairs, and the policy's chosen log-probs (to read gradients from)."""
    pi_c = torch.tensor(PI_C4, requires_grad=requires_grad)
    loss, chosen, rejected = dpo_loss(pi_c, *map(torch.tensor, (PI_R4, REF_C4, REF_R4)), **kwargs)
    return loss, chosen, rejected, pi_c


def test_the_four_pairs_have_the_margins_the_tests_assume():
    got = [(pc - rc) - (pr - rr) for pc, pr, rc, rr in zip(PI_C4, PI_R4, REF_C4, REF_R4)]
    assert got == H4


def test_hinge_loss_is_relu_of_one_minus_beta_h():
    # beta 0.5: 1 - beta h = 0.25, 0.5, 2.25, -2.0 -> relu 0.25, 0.5, 2.25, 0 -> mean 0.75
    loss, chosen, rejected, _ = dpo4(beta=0.5, loss_type="hinge")
    assert loss.item() == pytest.approx(0.75, rel=1e-6)
    assert loss.item() == pytest.approx(sum(max(0.0, 1 - 0.5 * h) for h in H4) / 4, rel=1e-6)
    # rewards do not depend on the loss type
    assert chosen.tolist() == pytest.approx([0.5 * (pc - rc) for pc, rc in zip(PI_C4, REF_C4)])
    assert rejected.tolist() == pytest.approx([0.5 * (pr - rr) for pr, rr in zip(PI_R4, REF_R4)])


def test_hinge_gradient_is_constant_inside_the_margin_and_zero_beyond_it():
    beta = 0.5
    loss, _, _, pi_c = dpo4(requires_grad=True, beta=beta, loss_type="hinge")
    loss.backward()
    # d/dpi_c of relu(1 - beta h) / 4 is -beta / 4 while beta h < 1 (pairs 1-3), else 0 (pair 4: beta h = 3)
    assert pi_c.grad.tolist() == pytest.approx([-beta / 4, -beta / 4, -beta / 4, 0.0])


def test_hinge_at_policy_equal_reference_is_one_and_beta_sets_the_margin():
    logps = torch.tensor([-3.0, -7.0])
    loss, _, _ = dpo_loss(logps, logps + 1, logps, logps + 1, beta=0.1, loss_type="hinge")
    assert loss.item() == pytest.approx(1.0)
    # a pair is satisfied once h reaches 1 / beta
    h = torch.tensor([10.0])
    zero = torch.zeros(1)
    assert dpo_loss(h, zero, zero, zero, beta=0.1, loss_type="hinge")[0].item() == pytest.approx(0.0, abs=1e-6)
    assert dpo_loss(h - 1, zero, zero, zero, beta=0.1, loss_type="hinge")[0].item() == pytest.approx(0.1)


def robust_by_hand(h: float, beta: float, eps: float) -> float:
    return (-(1 - eps) * math.log(sigmoid(beta * h)) + eps * math.log(sigmoid(-beta * h))) / (1 - 2 * eps)


def test_robust_loss_against_hand_values():
    beta, eps = 0.5, 0.2
    loss, _, _, _ = dpo4(beta=beta, label_smoothing=eps, loss_type="robust")
    assert loss.item() == pytest.approx(sum(robust_by_hand(h, beta, eps) for h in H4) / 4, rel=1e-6)
    # one pair worked out: h = 1.5, beta h = 0.75
    one = (0.8 * math.log(1 + math.exp(-0.75)) - 0.2 * math.log(1 + math.exp(0.75))) / 0.6
    assert robust_by_hand(1.5, beta, eps) == pytest.approx(one, rel=1e-12)


def test_robust_loss_is_unbiased_under_label_flips():
    """Chowdhury et al.'s defining property: with labels flipped at rate eps, the expected robust
    loss equals the clean DPO loss -log sigmoid(beta h)."""
    beta, eps = 0.5, 0.3
    c, r, rc, rr = map(torch.tensor, (PI_C4, PI_R4, REF_C4, REF_R4))
    kept = dpo_loss(c, r, rc, rr, beta=beta, label_smoothing=eps, loss_type="robust")[0]
    flipped = dpo_loss(r, c, rr, rc, beta=beta, label_smoothing=eps, loss_type="robust")[0]
    clean = sum(-math.log(sigmoid(beta * h)) for h in H4) / 4
    assert ((1 - eps) * kept + eps * flipped).item() == pytest.approx(clean, rel=1e-5)


def test_robust_with_eps_zero_is_dpo_and_starts_at_log_two():
    plain = dpo4(beta=0.5)[0]
    assert dpo4(beta=0.5, loss_type="robust")[0].item() == pytest.approx(plain.item(), rel=1e-6)
    logps = torch.tensor([-3.0, -7.0])
    for eps in (0.0, 0.1, 0.45):
        loss, _, _ = dpo_loss(logps, logps + 1, logps, logps + 1, beta=0.1, label_smoothing=eps, loss_type="robust")
        assert loss.item() == pytest.approx(math.log(2), rel=1e-6)


def test_robust_keeps_pushing_where_conservative_dpo_pulls_back():
    """At a large margin conservative DPO (sigmoid with eps) has passed its optimum,
    sigmoid(beta h) = 1 - eps, and its gradient lowers h; robust DPO's always raises it."""
    beta, eps = 0.5, 0.2
    z = beta * 6.0  # the fourth pair
    for loss_type, dz in (
        ("sigmoid", -(1 - eps) * sigmoid(-z) + eps * sigmoid(z)),
        ("robust", (-(1 - eps) * sigmoid(-z) - eps * sigmoid(z)) / (1 - 2 * eps)),
    ):
        loss, _, _, pi_c = dpo4(requires_grad=True, beta=beta, label_smoothing=eps, loss_type=loss_type)
        loss.backward()
        assert pi_c.grad[3].item() == pytest.approx(beta * dz / 4, rel=1e-5)
    assert -(1 - eps) * sigmoid(-z) + eps * sigmoid(z) > 0  # sigmoid pulls back at this pair
    assert (-(1 - eps) * sigmoid(-z) - eps * sigmoid(z)) < 0


@pytest.mark.parametrize("eps", [0.5, 0.7, -0.1])
def test_robust_rejects_a_flip_rate_outside_zero_to_one_half(eps):
    t = torch.zeros(1)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(t, t, t, t, beta=0.1, label_smoothing=eps, loss_type="robust")


@pytest.mark.parametrize("loss_type, at_zero", [
    ("sigmoid", math.log(2)), ("robust", math.log(2)), ("hinge", 1.0), ("ipo", (1 / (2 * 0.2)) ** 2),
])
def test_every_dpo_variant_at_policy_equal_reference(loss_type, at_zero):
    logps = torch.tensor([-3.0, -7.0, -1.5])
    loss, chosen, rejected = dpo_loss(logps, logps - 2, logps, logps - 2, beta=0.2, loss_type=loss_type)
    assert loss.item() == pytest.approx(at_zero, rel=1e-6)
    assert chosen.abs().max().item() == 0.0 and rejected.abs().max().item() == 0.0


# SimPO: length-normalised log-probs, e.g. chosen -3.6 over 3 tokens = -1.2
SIMPO_C, SIMPO_R = [-1.2, -0.5, -2.0], [-1.5, -0.4, -3.0]


def test_simpo_loss_against_hand_values_and_its_rewards():
    beta, gamma = 2.0, 0.5
    loss, chosen, rejected = simpo_loss(torch.tensor(SIMPO_C), torch.tensor(SIMPO_R), beta=beta, gamma=gamma)
    # beta (c - r) - gamma = 2 * 0.3 - 0.5 = 0.1, 2 * -0.1 - 0.5 = -0.7, 2 * 1.0 - 0.5 = 1.5
    expected = (math.log(1 + math.exp(-0.1)) + math.log(1 + math.exp(0.7)) + math.log(1 + math.exp(-1.5))) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert chosen.tolist() == pytest.approx([-2.4, -1.0, -4.0])
    assert rejected.tolist() == pytest.approx([-3.0, -0.8, -6.0])
    assert not chosen.requires_grad and not rejected.requires_grad


def test_simpo_gamma_is_a_margin_in_reward_units():
    same = torch.tensor([-1.0, -2.0])
    assert simpo_loss(same, same, beta=2.0, gamma=0.0)[0].item() == pytest.approx(math.log(2), rel=1e-6)
    # a pair meets the margin when beta (c - r) = gamma: loss log 2 again
    loss, _, _ = simpo_loss(torch.tensor([-1.0]), torch.tensor([-1.25]), beta=2.0, gamma=0.5)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)
    assert simpo_loss(same, same, beta=2.0, gamma=1.0)[0].item() == pytest.approx(math.log(1 + math.e), rel=1e-6)


def test_simpo_gradient_raises_the_chosen_and_lowers_the_rejected():
    beta, gamma = 2.0, 0.5
    c = torch.tensor(SIMPO_C, requires_grad=True)
    r = torch.tensor(SIMPO_R, requires_grad=True)
    simpo_loss(c, r, beta=beta, gamma=gamma)[0].backward()
    margins = [beta * (x - y) - gamma for x, y in zip(SIMPO_C, SIMPO_R)]
    assert c.grad.tolist() == pytest.approx([-beta * sigmoid(-m) / 3 for m in margins], rel=1e-5)
    assert r.grad.tolist() == pytest.approx([beta * sigmoid(-m) / 3 for m in margins], rel=1e-5)


def test_simpo_rejects_bad_beta():
    t = torch.zeros(1)
    with pytest.raises(ValueError, match="beta"):
        simpo_loss(t, t, beta=0.0, gamma=0.5)


def test_rpo_nll_is_the_per_token_nll_of_the_chosen_reply_averaged_over_pairs():
    # chosen replies: summed log-probs -6 over 3 tokens and -2 over 4 -> per token -2 and -0.5
    avg = torch.tensor([-6.0 / 3, -2.0 / 4], requires_grad=True)
    term = rpo_nll_loss(avg, rpo_alpha=0.5)
    assert term.item() == pytest.approx(0.5 * (2.0 + 0.5) / 2)  # 0.625
    assert term.item() != pytest.approx(0.5 * 8.0 / 7)  # each pair weighs the same, not each token
    term.backward()
    assert avg.grad.tolist() == pytest.approx([-0.25, -0.25])  # lowers the NLL of every chosen reply
    assert rpo_nll_loss(avg, rpo_alpha=0.0).item() == 0.0
    with pytest.raises(ValueError, match="rpo_alpha"):
        rpo_nll_loss(avg, rpo_alpha=-1.0)
