"""The dpo stage's config: which loss settings go together, and what each loss needs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from xwin.train.dpo_config import DpoConfig


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "robust"])
def test_reference_losses_need_a_reference(loss_type):
    assert DpoConfig(loss_type=loss_type).needs_reference


def test_simpo_is_reference_free_and_has_its_gamma():
    config = DpoConfig(loss_type="simpo", beta=2.0, simpo_gamma=1.0)
    assert not config.needs_reference and config.simpo_gamma == 1.0


@pytest.mark.parametrize("eps", [0.0, 0.2, 0.49])
def test_robust_takes_a_flip_rate_below_one_half(eps):
    assert DpoConfig(loss_type="robust", label_smoothing=eps).label_smoothing == eps


@pytest.mark.parametrize("eps", [0.5, 0.6, -0.1])
def test_robust_refuses_a_flip_rate_outside_zero_to_one_half(eps):
    with pytest.raises(ValidationError, match="label_smoothing"):
        DpoConfig(loss_type="robust", label_smoothing=eps)


@pytest.mark.parametrize("loss_type", ["ipo", "hinge", "simpo"])
def test_label_smoothing_is_refused_where_the_loss_ignores_it(loss_type):
    with pytest.raises(ValidationError, match=f"label_smoothing is for loss_type sigmoid or robust, not {loss_type}"):
        DpoConfig(loss_type=loss_type, label_smoothing=0.1)


def test_simpo_refuses_an_online_reference_it_would_never_run():
    with pytest.raises(ValidationError, match="uses no reference model"):
        DpoConfig(loss_type="simpo", reference="online")
    DpoConfig(loss_type="simpo")  # the default reference setting is simply unused


def test_rpo_alpha_is_off_by_default_and_not_negative():
    assert DpoConfig().rpo_alpha is None
    assert DpoConfig(rpo_alpha=0.5).rpo_alpha == 0.5
    with pytest.raises(ValidationError, match="rpo_alpha"):
        DpoConfig(rpo_alpha=-0.1)


def test_unknown_loss_type_is_a_validation_error():
    with pytest.raises(ValidationError, match="loss_type"):
        DpoConfig(loss_type="kto_pair")


def test_simpo_gets_its_own_beta_unless_one_is_given():
    from xwin.train.dpo_config import SIMPO_DEFAULT_BETA, DpoConfig

    assert DpoConfig(loss_type="simpo").beta == SIMPO_DEFAULT_BETA == 2.0
    assert DpoConfig(loss_type="simpo", beta=5.0).beta == 5.0
    assert DpoConfig(loss_type="simpo", beta=0.1).beta == 0.1  # said explicitly: kept
    assert DpoConfig().beta == DpoConfig(loss_type="hinge").beta == 0.1
