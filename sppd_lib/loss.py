"""Losses as small pure tensor functions (Yi et al., "SPPD", arXiv 2502.13516, §3).

SPPD, for a chosen step a_w and a rejected step a_l that share the state s_t:

    h_θ = [log π_θ(a_w|s_t) − log π_ref(a_w|s_t)] − [log π_θ(a_l|s_t) − log π_ref(a_l|s_t)]
    L   = − log σ( β·h_θ − γ·(v(s_t|a_w) − v(s_t|a_l)) )

Log-probs are sums over each step's tokens. The ``margin`` argument is the whole subtracted
term, built by :func:`value_margin` at training time from the pair's value gap Δv: γ·Δv
(``dynamic``, SPPD), a constant (``fixed``, the paper's "fixed margin" ablation) or 0
(``none``: Step-DPO; also sentence-level DPO when the "steps" are whole solutions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sppd_lib.config import MARGIN_MODES

__all__ = ["dpo_loss", "sft_loss", "sppd_loss", "value_margin"]


def value_margin(
    delta_value: torch.Tensor, mode: str, gamma: float, fixed_margin: float | None = None
) -> torch.Tensor:
    """The margin subtracted inside the SPPD sigmoid, per pair.

    The soft Bellman step reward r = β·log π*/π_ref + V*(s_t) − V*(s_{t+1}) puts the value
    difference of the two siblings into the Bradley–Terry logit; scaling that potential by γ
    keeps the reward equivalent, so the margin is γ·(v_w − v_l).

    Args:
        delta_value: ``(pairs,)`` v(chosen) − v(rejected), > threshold (0.5) by construction.
        mode: ``dynamic`` (γ·Δv, SPPD), ``fixed`` (``fixed_margin`` for every pair; when
            ``None``, the mean of γ·Δv over these pairs, so it matches the dynamic margin on
            average) or ``none`` (0, Step-DPO).
        gamma: γ ≥ 0 (paper sweeps 0.1–5).
        fixed_margin: the constant of ``fixed`` (≥ 0), or ``None`` for the mean of γ·Δv.

    Returns:
        ``(pairs,)`` margins, same dtype as ``delta_value``.
    """
    if mode == "dynamic":
        return gamma * delta_value
    if mode == "fixed":
        if fixed_margin is None:
            constant = (
                (gamma * delta_value).mean() if delta_value.numel() else delta_value.new_zeros(())
            )
        else:
            constant = delta_value.new_tensor(fixed_margin)
        return torch.ones_like(delta_value) * constant
    if mode == "none":
        return torch.zeros_like(delta_value)
    raise ValueError(f"margin mode must be one of {MARGIN_MODES}, not {mode!r}")


def sppd_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    margin: torch.Tensor | float,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair SPPD losses and implicit rewards.

    Args:
        policy_chosen_logps, policy_rejected_logps: ``(pairs,)`` summed step log-probs under π_θ.
        ref_chosen_logps, ref_rejected_logps: ``(pairs,)`` the same under π_ref.
        margin: ``(pairs,)`` or a scalar, γ·Δv ≥ 0 (0 gives Step-DPO).
        beta: β of the paper (0.1).

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(pairs,)``; the rewards are
        β·(log π_θ − log π_ref), detached, as logged by DPO trainers.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    h = chosen_logratios - rejected_logratios
    # −log σ(x) = softplus(−x): stable for any x, no NaN for extreme log-probs.
    losses = -F.logsigmoid(beta * h - margin)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sentence-level DPO (Rafailov et al. 2023): SPPD with margin 0 over whole solutions."""
    return sppd_loss(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, 0.0, beta
    )


def sft_loss(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the target tokens.

    Args:
        token_logps: ``(batch, seq_len)`` log-prob of each target token.
        mask: ``(batch, seq_len)`` 1 where the token is a target (the solution), 0 elsewhere.
    """
    mask = mask.to(token_logps.dtype)
    return -(token_logps * mask).sum() / mask.sum().clamp(min=1.0)
