"""The training objectives as pure functions of tensors: no models, no state, so each can be
checked against hand-computed values.

Shapes: B = batch, T = sequence length, V = vocabulary. `labels` follow the HF convention: aligned
with `input_ids` (not shifted), IGNORE_INDEX (-100) where no loss is taken. The functions that
take logits and labels do the next-token shift themselves: the logits at position t predict the
label at position t + 1.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from xwin.data.templating import IGNORE_INDEX


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of positions 0..T-2 paired with labels of positions 1..T-1."""
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ in [B, T]")
    return logits[:, :-1, :], labels[:, 1:]


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token cross-entropy averaged over the positions whose label is not IGNORE_INDEX.

    Shifts internally (pass labels aligned with input_ids). Computed in float32 whatever the
    logits' dtype. A batch without a single trained token gives 0 (with a graph), not NaN, so
    one empty micro-batch cannot poison a run."""
    logits, labels = _shifted(logits, labels)
    trained = labels != IGNORE_INDEX
    if not trained.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[trained].float(), labels[trained], reduction="mean")


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position log p(label) of the shifted labels [B, T-1] (0 where ignored) and the mask of
    counted positions [B, T-1]."""
    logits, labels = _shifted(logits, labels)
    counted = labels != IGNORE_INDEX
    safe = labels.masked_fill(~counted, 0)
    logits = logits.float()
    # log_softmax gathered at the label = logit - logsumexp, without a second [B, T, V] tensor
    picked = torch.gather(logits, 2, safe.unsqueeze(-1)).squeeze(-1)
    logps = picked - torch.logsumexp(logits, dim=-1)
    return logps * counted, counted


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(reply | context) per sequence [B]: the sum of the log-probs of the labelled tokens
    (the reply; IGNORE_INDEX on the context and padding). Shifts internally."""
    logps, _ = token_logps(logits, labels)
    return logps.sum(-1)


def reply_labels(input_ids: torch.Tensor, reply_mask: torch.Tensor) -> torch.Tensor:
    """Labels for `sequence_logps` from a reply mask (1 on reply tokens): ids there, -100 elsewhere.
    Built from the mask, never from pad ids (the pad token may equal the end-of-turn token)."""
    return input_ids.masked_fill(reply_mask == 0, IGNORE_INDEX)


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise reward-model loss -log sigmoid(r_chosen - r_rejected - margin), averaged over
    pairs, and the pairwise accuracy (share of pairs with r_chosen > r_rejected; ties count as
    wrong). `margin` (Llama-2 style: larger for clearer preferences) is a float or one per pair."""
    diff = chosen_rewards.float() - rejected_rewards.float()
    if margin is not None:
        diff = diff - torch.as_tensor(margin, dtype=diff.dtype, device=diff.device)
    loss = -F.logsigmoid(diff).mean()
    accuracy = (chosen_rewards > rejected_rewards).float().mean()
    return loss, accuracy


DpoLossType = Literal["sigmoid", "ipo", "hinge", "robust"]


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    loss_type: DpoLossType = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct Preference Optimization and its variants over a batch of pairs [B]; returns (mean
    loss, chosen rewards [B], rejected rewards [B]) where a reward is beta * (log pi - log pi_ref)
    of that reply (detached).

    With h = (pi_c - ref_c) - (pi_r - ref_r), eps = label_smoothing, per pair:
      sigmoid: -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)   (Rafailov et al. 2023;
               eps > 0 is conservative DPO, eps = 0 the original loss)
      ipo:     (h - 1 / (2 beta))^2   (Azar et al. 2023; the paper's log-probs are per-token
               averages, so callers pass length-normalised log-probs for IPO)
      hinge:   max(0, 1 - beta h)   (RSO, Liu et al. 2023, after SLiC: 1 / beta is the margin)
      robust:  (-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)) / (1 - 2 eps)
               (Chowdhury et al. 2024, "Provably Robust DPO": an unbiased estimate of the DPO loss
               when each label is flipped with probability eps; needs 0 <= eps < 0.5, and eps = 0
               is the original loss. Unlike the others it is unbounded below when eps > 0.)
    label_smoothing is ignored by ipo and hinge.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    pi_c, pi_r = policy_chosen_logps.float(), policy_rejected_logps.float()
    ref_c, ref_r = ref_chosen_logps.float(), ref_rejected_logps.float()
    h = (pi_c - ref_c) - (pi_r - ref_r)
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h) * (1 - eps) - F.logsigmoid(-beta * h) * eps
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    elif loss_type == "robust":
        if not 0 <= eps < 0.5:
            raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {eps}")
        losses = (-F.logsigmoid(beta * h) * (1 - eps) + F.logsigmoid(-beta * h) * eps) / (1 - 2 * eps)
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; expected 'sigmoid', 'ipo', 'hinge' or 'robust'")
    chosen_rewards = beta * (pi_c - ref_c).detach()
    rejected_rewards = beta * (pi_r - ref_r).detach()
    return losses.mean(), chosen_rewards, rejected_rewards


def simpo_loss(
    chosen_avg_logps: torch.Tensor,
    rejected_avg_logps: torch.Tensor,
    beta: float,
    gamma: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO (Meng et al. 2024): reference-free, on length-normalised log-probs [B] (a reply's
    summed log-probs over its token count). Returns (mean loss, chosen rewards [B], rejected
    rewards [B]) like `dpo_loss`, a reward being beta / |y| * log pi(y | x) (detached).

    Per pair: -log sigmoid(beta * (chosen_avg - rejected_avg) - gamma); gamma is the target
    reward margin (the paper's gamma, not gamma / beta). No reference model is involved.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen_rewards = beta * chosen_avg_logps.float()
    rejected_rewards = beta * rejected_avg_logps.float()
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return losses.mean(), chosen_rewards.detach(), rejected_rewards.detach()


def rpo_nll_loss(chosen_avg_logps: torch.Tensor, rpo_alpha: float) -> torch.Tensor:
    """The NLL term RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization") adds to
    a preference loss: rpo_alpha * mean over pairs of -(1 / |y_c|) log pi(y_c | x), from the
    chosen replies' length-normalised log-probs [B]. Each pair weighs the same whatever its
    length (TRL's rpo_alpha averages over all chosen tokens of the batch instead; the two agree
    when the chosen replies have equal lengths)."""
    if rpo_alpha < 0:
        raise ValueError(f"rpo_alpha must be >= 0, got {rpo_alpha}")
    return rpo_alpha * -chosen_avg_logps.float().mean()
