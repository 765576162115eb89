"""GAE pinned against hand-computed values: termination, truncation, next-step autoreset (ALGORITHM.md §2)."""

import pytest
import torch

from vla_structppo.algo import compute_gae

GAMMA, LAM = 0.9, 0.8
R = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
V = torch.tensor([[0.5], [0.4], [0.3], [0.2]])
NEXT = torch.tensor([10.0])
NO = torch.zeros(4, 1, dtype=torch.bool)


def at(t):
    m = NO.clone()
    m[t] = True
    return m


def test_termination_cuts_and_does_not_bootstrap():
    adv, ret = compute_gae(R, V, NEXT, at(1), NO, gamma=GAMMA, gae_lambda=LAM)
    # t3: 4 + .9*10 - .2 = 12.8 ; t2: 3 + .9*.2 - .3 + .72*12.8 = 12.096 ; t1 (terminal): 2 - .4 = 1.6
    # t0: 1 + .9*.4 - .5 + .72*1.6 = 2.012
    assert torch.allclose(adv[:, 0], torch.tensor([2.012, 1.6, 12.096, 12.8]), atol=1e-5)
    assert torch.allclose(ret, adv + V)


def test_truncation_bootstraps_with_final_observation_value():
    final = torch.zeros(4, 1)
    final[1] = 5.0
    adv, _ = compute_gae(R, V, NEXT, NO, at(1), gamma=GAMMA, gae_lambda=LAM, final_values=final)
    # t1: 2 + .9*5 - .4 = 6.1 (chain cut, but bootstrapped); t0: .86 + .72*6.1 = 5.252
    assert torch.allclose(adv[:, 0], torch.tensor([5.252, 6.1, 12.096, 12.8]), atol=1e-5)


def test_truncation_without_final_values_is_an_error():
    with pytest.raises(ValueError, match="final_values"):
        compute_gae(R, V, NEXT, NO, at(1), gamma=GAMMA, gae_lambda=LAM)


def test_next_step_autoreset_step_is_masked():
    # done at t1 (truncated); t2 is the reset call of a next-step autoreset env: not a transition.
    # The final obs of the episode is obs[2], so V(final obs) = values[2] = .3.
    valid = ~at(2)
    final = torch.cat([V[1:], NEXT[None]], 0)
    adv, ret = compute_gae(R, V, NEXT, NO, at(1), gamma=GAMMA, gae_lambda=LAM, final_values=final, valid=valid)
    # t1: 2 + .9*.3 - .4 = 1.87 ; t0: .86 + .72*1.87 = 2.2064 ; t2 masked ; t3: 12.8
    assert torch.allclose(adv[:, 0], torch.tensor([2.2064, 1.87, 0.0, 12.8]), atol=1e-5)
    assert ret[2, 0] == 0.0


def test_terminated_and_truncated_counts_as_terminated():
    adv, _ = compute_gae(R, V, NEXT, at(1), at(1), gamma=GAMMA, gae_lambda=LAM, final_values=torch.full((4, 1), 99.0))
    assert torch.allclose(adv[1, 0], torch.tensor(1.6))


def test_many_envs_are_independent():
    R2 = torch.cat([R, R * 2], 1)
    V2 = torch.cat([V, V], 1)
    term = torch.cat([at(1), NO], 1)
    adv, _ = compute_gae(R2, V2, torch.tensor([10.0, 0.0]), term, torch.zeros_like(term), gamma=GAMMA, gae_lambda=LAM)
    single, _ = compute_gae(R, V, NEXT, at(1), NO, gamma=GAMMA, gae_lambda=LAM)
    assert torch.allclose(adv[:, :1], single)
    # env 1 never ends: plain discounted GAE with next value 0
    d3 = 8 - 0.2
    assert torch.allclose(adv[3, 1], torch.tensor(d3))
