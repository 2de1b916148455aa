from __future__ import annotations

import math

import pytest
import torch

from sppd_lib.loss import dpo_loss, sft_loss, sppd_loss, value_margin


def test_hand_computation() -> None:
    # h = (−1 − (−2)) − (−3 − (−2.5)) = 1 + 0.5 = 1.5; x = 0.1·1.5 − 0.4 = −0.25
    losses, chosen, rejected = sppd_loss(
        torch.tensor([-1.0]),
        torch.tensor([-3.0]),
        torch.tensor([-2.0]),
        torch.tensor([-2.5]),
        margin=torch.tensor([0.4]),
        beta=0.1,
    )
    assert losses.item() == pytest.approx(math.log(1 + math.exp(0.25)))
    assert chosen.item() == pytest.approx(0.1) and rejected.item() == pytest.approx(-0.05)


def test_zero_margin_is_dpo() -> None:
    torch.manual_seed(0)
    logps = [torch.randn(8) * 5 for _ in range(4)]
    step_dpo, _, _ = sppd_loss(*logps, margin=0.0, beta=0.1)
    dpo, _, _ = dpo_loss(*logps, beta=0.1)
    assert torch.allclose(step_dpo, dpo)
    # The standard DPO formula, written out.
    expected = -torch.log(torch.sigmoid(0.1 * ((logps[0] - logps[2]) - (logps[1] - logps[3]))))
    assert torch.allclose(dpo, expected, atol=1e-6)


def test_positive_margin_raises_the_loss_below_the_gap() -> None:
    args = (torch.tensor([-1.0]), torch.tensor([-1.2]), torch.tensor([-1.0]), torch.tensor([-1.0]))
    without, _, _ = sppd_loss(*args, margin=0.0, beta=0.1)  # implicit reward gap 0.02
    with_margin, _, _ = sppd_loss(*args, margin=0.5, beta=0.1)
    assert with_margin.item() > without.item()


def test_gradient_raises_chosen_and_lowers_rejected() -> None:
    chosen = torch.tensor([-2.0, -5.0], requires_grad=True)
    rejected = torch.tensor([-2.0, -1.0], requires_grad=True)
    losses, _, _ = sppd_loss(
        chosen,
        rejected,
        torch.tensor([-2.0, -5.0]),
        torch.tensor([-2.0, -1.0]),
        margin=torch.tensor([0.5, 1.0]),
        beta=0.1,
    )
    losses.sum().backward()
    assert (chosen.grad < 0).all() and (
        rejected.grad > 0
    ).all()  # descent: chosen up, rejected down


def test_no_nan_for_extreme_logps() -> None:
    big = torch.tensor([-1e4, 0.0, -1e30])
    small = torch.tensor([0.0, -1e4, 0.0])
    losses, _, _ = sppd_loss(big, small, small, big, margin=torch.tensor([5.0, 0.0, 1e6]), beta=0.1)
    assert torch.isfinite(losses).all()
    assert losses[1].item() == pytest.approx(0.0, abs=1e-6)  # a huge correct gap costs nothing


def test_sft_loss_masks_the_prompt() -> None:
    token_logps = torch.tensor([[-9.0, -1.0, -3.0], [-9.0, -9.0, -2.0]])
    mask = torch.tensor([[0, 1, 1], [0, 0, 1]])
    assert sft_loss(token_logps, mask).item() == pytest.approx((1 + 3 + 2) / 3)
    assert sft_loss(token_logps, torch.zeros_like(mask)).item() == 0.0


def test_value_margin_modes_by_hand() -> None:
    delta = torch.tensor([0.6, 0.8, 1.0])
    assert value_margin(delta, "dynamic", 2.0).tolist() == pytest.approx([1.2, 1.6, 2.0])
    assert value_margin(delta, "none", 2.0).tolist() == [0.0, 0.0, 0.0]
    assert value_margin(delta, "fixed", 2.0, 0.3).tolist() == pytest.approx([0.3] * 3)
    # fixed without a constant: the mean of γ·Δv, (1.2 + 1.6 + 2.0) / 3 = 1.6
    assert value_margin(delta, "fixed", 2.0).tolist() == pytest.approx([1.6] * 3)
    assert value_margin(torch.tensor([]), "fixed", 1.0).tolist() == []
    with pytest.raises(ValueError, match="margin mode"):
        value_margin(delta, "dynamc", 1.0)


def test_dynamic_margin_weights_pairs_by_their_value_gap() -> None:
    # Same log-probs, different Δv: the pair with the larger gap gets the larger loss and
    # gradient, which is what distinguishes SPPD from a fixed margin.
    logps = [torch.zeros(2, requires_grad=True), torch.zeros(2), torch.zeros(2), torch.zeros(2)]
    margin = value_margin(torch.tensor([0.6, 1.0]), "dynamic", 5.0)
    losses, _, _ = sppd_loss(*logps, margin=margin, beta=0.1)
    losses.sum().backward()
    assert losses[1] > losses[0]
    assert -logps[0].grad[1] > -logps[0].grad[0] > 0
