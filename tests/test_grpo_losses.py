"""The anchors' recipe pieces, exactly: GRPO's group advantages and group filter (algo/grpo.py), clip-higher,
dual clip, token-mean vs sample-mean aggregation and the per-action ratio (algo/losses.py)."""

from __future__ import annotations

import math

import pytest
import torch

from vla_structppo.algo import ppo_policy_loss
from vla_structppo.algo.grpo import group_advantages, group_keep_mask


def test_group_advantages_on_a_hand_table():
    R = torch.tensor([5.0, 0.0, 0.0, 5.0,    # mixed: mean 2.5, unbiased std sqrt(4 * 2.5^2 / 3)
                      5.0, 5.0, 5.0, 5.0,    # all succeed: std 0 -> advantage 0
                      0.0, 0.0, 0.0, 5.0])   # one success of four: mean 1.25, std sqrt((3 * 1.25^2 + 3.75^2) / 3)
    adv = group_advantages(R, group_size=4)
    s1 = math.sqrt(4 * 2.5**2 / 3)
    s3 = math.sqrt((3 * 1.25**2 + 3.75**2) / 3)
    expected = [2.5 / (s1 + 1e-6), -2.5 / (s1 + 1e-6), -2.5 / (s1 + 1e-6), 2.5 / (s1 + 1e-6),
                0.0, 0.0, 0.0, 0.0,
                -1.25 / (s3 + 1e-6), -1.25 / (s3 + 1e-6), -1.25 / (s3 + 1e-6), 3.75 / (s3 + 1e-6)]
    assert adv.tolist() == pytest.approx(expected, rel=1e-6)
    # a group of one: verl's mean 0, std 1
    assert group_advantages(torch.tensor([5.0, 0.0]), group_size=1).tolist() == pytest.approx([5 / (1 + 1e-6), 0.0])
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(6), group_size=4)


def test_groups_outside_the_success_band_are_dropped():
    success = torch.tensor([1, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1], dtype=torch.float32)
    keep = group_keep_mask(success, group_size=4, band=(0.1, 0.9))  # rates 0.5, 1.0, 0.0, 0.25
    assert keep.tolist() == [True] * 4 + [False] * 8 + [True] * 4
    assert group_keep_mask(success, 4, None).all()
    # the band's ends are inclusive
    assert group_keep_mask(success, 4, (0.25, 0.5)).tolist() == [True] * 4 + [False] * 8 + [True] * 4


def _grad(logp_new_value: float, adv: float, **kw) -> tuple[float, float]:
    """(loss, d loss / d logp_new) of one sample, one token, old log-prob 0."""
    logp = torch.tensor([[logp_new_value]], requires_grad=True)
    loss, _ = ppo_policy_loss(logp, torch.zeros(1, 1), torch.tensor([[adv]]), 0.2, ratio="token", **kw)
    loss.backward()
    return float(loss.detach()), float(logp.grad[0, 0])


def test_clip_higher_lets_a_positive_advantage_push_the_ratio_further():
    r = 1.25  # outside [0.8, 1.2], inside [0.8, 1.28]
    loss_sym, g_sym = _grad(math.log(r), 1.0)
    loss_high, g_high = _grad(math.log(r), 1.0, clip_coef_high=0.28)
    assert g_sym == 0.0 and loss_sym == pytest.approx(-1.2)  # clipped: no gradient
    assert g_high == pytest.approx(-r) and loss_high == pytest.approx(-r)  # d(-r A)/dlogp = -r A
    # the low end is unchanged: a negative advantage below 1 - eps is still clipped
    assert _grad(math.log(0.7), -1.0, clip_coef_high=0.28)[1] == 0.0
    assert _grad(math.log(1.3), 1.0, clip_coef_high=0.28)[1] == 0.0  # past 1.28: clipped


def test_dual_clip_bounds_a_negative_advantages_term():
    A, c = -2.0, 3.0
    # ratio 5 on a bad action: PPO's term min(5 A, 1.2 A) = -10 (gradient -5 A = 10 per unit logp); dual clip
    # caps it at c A = -6 with no gradient
    loss, g = _grad(math.log(5.0), A)
    assert loss == pytest.approx(10.0) and g == pytest.approx(-5.0 * A)
    loss, g = _grad(math.log(5.0), A, dual_clip=c)
    assert loss == pytest.approx(-c * A) and g == 0.0
    # below c the dual clip changes nothing
    assert _grad(math.log(2.0), A, dual_clip=c) == pytest.approx(_grad(math.log(2.0), A))
    # a positive advantage is never dual-clipped
    assert _grad(math.log(5.0), 2.0, dual_clip=c) == pytest.approx(_grad(math.log(5.0), 2.0))


def test_token_mean_and_sample_mean_weigh_tokens_differently():
    """2 samples x 3 tokens, ratios 1 (so each term is A), sample 0 has only 1 executed token."""
    A = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    tokens = torch.tensor([[True, False, False], [True, True, True]])
    logp = torch.zeros(2, 3, requires_grad=True)
    sample, _ = ppo_policy_loss(logp, torch.zeros(2, 3), A, 0.2, token_mask=tokens, aggregation="sample_mean")
    token, _ = ppo_policy_loss(logp, torch.zeros(2, 3), A, 0.2, token_mask=tokens, aggregation="token_mean")
    assert float(sample.detach()) == pytest.approx(-(1.0 + 15.0) / 2)  # per-sample token sums, averaged over samples
    assert float(token.detach()) == pytest.approx(-(1.0 + 15.0) / 4)  # every executed token alike
    (grad,) = torch.autograd.grad(token, logp)
    assert grad.flatten().tolist() == pytest.approx([-0.25, 0.0, 0.0, -1.0, -1.25, -1.5])  # masked tokens: no gradient
    # without a token mask the two differ by the factor D
    full_s, _ = ppo_policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), A, 0.2, aggregation="sample_mean")
    full_t, _ = ppo_policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), A, 0.2, aggregation="token_mean")
    assert float(full_s) == pytest.approx(3 * float(full_t))
    # a masked sample (autoreset step) counts in neither
    mask = torch.tensor([True, False])
    only0, _ = ppo_policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), A, 0.2, mask=mask, token_mask=tokens,
                               aggregation="token_mean")
    assert float(only0) == pytest.approx(-1.0)


def test_the_action_ratio_is_one_ratio_per_step_routed_per_token():
    """2 steps x 2 dims; step 0's tokens move by +0.1 and +0.2 (ratio e^0.3 > 1.2: clipped for a positive A),
    step 1's by 0 and 0.05 (ratio e^0.05, inside the clip)."""
    dlogp = torch.tensor([[0.1, 0.2, 0.0, 0.05]])
    logp = dlogp.clone().requires_grad_(True)
    A = torch.ones(1, 4)
    loss, m = ppo_policy_loss(logp, torch.zeros(1, 4), A, 0.2, ratio="action", step_dims=2)
    (grad,) = torch.autograd.grad(loss, logp)
    r1 = math.exp(0.05)
    assert grad.flatten().tolist() == pytest.approx([0.0, 0.0, -r1, -r1])  # step 0 clipped, step 1 at its own ratio
    assert float(loss.detach()) == pytest.approx(-(1.2 + 1.2 + r1 + r1))
    # without chunks (one step of all tokens) the action ratio is the joint ratio
    a, _ = ppo_policy_loss(logp, torch.zeros(1, 4), A, 0.2, ratio="action", step_dims=4)
    j, _ = ppo_policy_loss(logp, torch.zeros(1, 4), A, 0.2, ratio="joint")
    assert float(a.detach()) == pytest.approx(float(j.detach()))
    with pytest.raises(ValueError, match="step_dims"):
        ppo_policy_loss(logp, torch.zeros(1, 4), A, 0.2, ratio="action", step_dims=3)


def test_unexecuted_tokens_take_no_part_in_the_joint_ratio():
    """A chunk whose second step was never executed: its token's log-prob change must not clip the first's."""
    logp = torch.tensor([[0.05, 5.0]], requires_grad=True)
    loss, m = ppo_policy_loss(logp, torch.zeros(1, 2), torch.ones(1, 2), 0.2, ratio="joint",
                              token_mask=torch.tensor([[True, False]]))
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad.flatten().tolist() == pytest.approx([-math.exp(0.05), 0.0])
    assert float(m["ratio_mean"]) == pytest.approx(math.exp(0.05))
