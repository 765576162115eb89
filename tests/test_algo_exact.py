"""ALGORITHM.md §8: exact (not statistical) tests on a tiny action space where every action is enumerable.

D=3 dims, K=3 bins -> 27 joint actions; a reward table with known per-dim and pairwise parts.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from vla_structppo.algo import (
    StructuredAdvantageHead,
    counterfactual_baseline,
    credit_advantages,
    head_loss,
    ppo_policy_loss,
)

D, K = 3, 3
ACTIONS = torch.tensor(list(itertools.product(range(K), repeat=D)))  # [27, D]


def reward_table(seed: int = 0, pairwise: bool = True):
    """R(a) = sum_i r_i(a^i) + sum_{i<j} r_ij(a^i, a^j); returns R [27] and the parts."""
    g = torch.Generator().manual_seed(seed)
    r_i = torch.randn(D, K, generator=g, dtype=torch.float64)
    r_ij = torch.randn(D, D, K, K, generator=g, dtype=torch.float64) * (1.0 if pairwise else 0.0)
    R = torch.zeros(len(ACTIONS), dtype=torch.float64)
    for n, a in enumerate(ACTIONS):
        R[n] = sum(r_i[i, a[i]] for i in range(D)) + sum(
            r_ij[i, j, a[i], a[j]] for i in range(D) for j in range(i + 1, D))
    return R, r_i, r_ij


class IndependentPolicy:
    autoregressive = False

    def __init__(self, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        self.theta = (torch.randn(D, K, generator=g, dtype=torch.float64)).requires_grad_()

    def params(self):
        return [self.theta]

    def log_probs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``logp [27, D]`` of every action's dims and ``bin_probs [27, D, K]`` (centering weights)."""
        lp = torch.log_softmax(self.theta, -1)  # [D, K]
        logp = lp[torch.arange(D)[None], ACTIONS]  # [27, D]
        return logp, lp.exp()[None].expand(len(ACTIONS), D, K)


class AutoregressivePolicy:
    """pi_i(a^i | a^{<i}) with logits theta_i + sum_{j<i} W[i, j, a^j]."""

    autoregressive = True

    def __init__(self, seed: int = 2):
        g = torch.Generator().manual_seed(seed)
        self.theta = torch.randn(D, K, generator=g, dtype=torch.float64).requires_grad_()
        self.W = (torch.randn(D, D, K, K, generator=g, dtype=torch.float64) * 1.5).requires_grad_()

    def params(self):
        return [self.theta, self.W]

    def log_probs(self):
        rows_logp, rows_probs = [], []
        for a in ACTIONS:
            lps = []
            for i in range(D):
                logits = self.theta[i] + sum((self.W[i, j, a[j]] for j in range(i)), torch.zeros(K, dtype=torch.float64))
                lps.append(torch.log_softmax(logits, -1))
            lp = torch.stack(lps)  # [D, K]
            rows_logp.append(lp[torch.arange(D), a])
            rows_probs.append(lp.exp())
        return torch.stack(rows_logp), torch.stack(rows_probs)


def random_head(centering: str, seed: int = 3, pairwise: bool = True) -> StructuredAdvantageHead:
    torch.manual_seed(seed)
    head = StructuredAdvantageHead(5, D, K, hidden_size=16, bin_embed_dim=8, rank=4, pairwise=pairwise,
                                   centering=centering)
    with torch.no_grad():  # make every term clearly non-zero
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return head


FEATURES = torch.randn(1, 5, generator=torch.Generator().manual_seed(7))


def expected_gradient(policy, per_dim_adv: torch.Tensor) -> torch.Tensor:
    """sum_a pi(a) sum_i A_i(a) grad log pi_i(a^i | .), exactly, by enumeration."""
    logp, _ = policy.log_probs()
    pi = logp.sum(1).exp().detach()  # [27]
    surrogate = (pi[:, None] * per_dim_adv.detach().double() * logp).sum()
    grads = torch.autograd.grad(surrogate, policy.params())
    return torch.cat([g.flatten() for g in grads])


def head_on_all_actions(head, policy):
    _, probs = policy.log_probs()
    return head(FEATURES.expand(len(ACTIONS), -1), ACTIONS, probs.detach().float())


# -- 1. identities ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("centering", ["policy", "uniform"])
def test_centering_identities(centering):
    head = random_head(centering)
    B = 4
    feats = torch.randn(B, 5)
    w = torch.softmax(torch.randn(B, D, K), -1) if centering == "policy" else torch.full((B, D, K), 1 / K)
    # u~_i(k): put bin k in every dim
    u = torch.stack([head(feats, torch.full((B, D), k), w).per_dim for k in range(K)], -1)  # [B, D, K]
    assert torch.allclose((w * u).sum(-1), torch.zeros(B, D), atol=1e-5)
    # p~_ij(k, m) for every pair: weighted sums over either argument vanish for every value of the other
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        P = torch.zeros(B, K, K)
        for k, m in itertools.product(range(K), repeat=2):
            a = torch.zeros(B, D, dtype=torch.long)
            a[:, i], a[:, j] = k, m
            P[:, k, m] = head(feats, a, w).pair[:, i, j]
        assert P.abs().max() > 1e-3  # the terms are not trivially zero
        assert torch.allclose((w[:, i, :, None] * P).sum(1), torch.zeros(B, K), atol=1e-5)
        assert torch.allclose((w[:, j, None, :] * P).sum(2), torch.zeros(B, K), atol=1e-5)


def test_forward_matches_all_bin_scores():
    head = random_head("policy")
    B = 6
    feats, a = torch.randn(B, 5), torch.randint(0, K, (B, D))
    w = torch.softmax(torch.randn(B, D, K), -1)
    out = head(feats, a, w)
    s = head.score_all_bins(feats)
    u_tilde = s.u - (w * s.u).sum(-1, keepdim=True)
    assert torch.allclose(out.per_dim, u_tilde.gather(-1, a[..., None]).squeeze(-1), atol=1e-5)
    lc = s.left - (w[..., None] * s.left).sum(2, keepdim=True)
    rc = s.right - (w[..., None] * s.right).sum(2, keepdim=True)
    idx = a[:, :, None, None].expand(B, D, 1, s.left.shape[-1])
    lt, rt = lc.gather(2, idx).squeeze(2), rc.gather(2, idx).squeeze(2)
    pair = torch.einsum("bir,ijr,bjr->bij", lt, s.gate, rt).triu(1)
    assert torch.allclose(out.pair, pair, atol=1e-5)
    assert torch.allclose(out.total, out.shared + out.per_dim.sum(-1) + out.pair.sum((1, 2)), atol=1e-5)
    assert torch.equal(out.pair.tril(), torch.zeros_like(out.pair))


def test_counterfactual_baseline_brute_force():
    head_out = random_head("uniform")(torch.randn(5, 5), torch.randint(0, K, (5, D)))
    b, u, P = head_out.shared, head_out.per_dim, head_out.pair
    for ar in (False, True):
        c = counterfactual_baseline(head_out, autoregressive=ar)
        for i in range(D):
            keep = (lambda j, i=i: j < i) if ar else (lambda j, i=i: j != i)
            want = b + sum((u[:, j] for j in range(D) if keep(j)), torch.zeros_like(b))
            want = want + sum((P[:, j, k] for j in range(D) for k in range(j + 1, D) if keep(j) and keep(k)),
                              torch.zeros_like(b))
            assert torch.allclose(c[:, i], want, atol=1e-5), (ar, i)


def test_credit_mode_identities():
    head_out = random_head("policy")(torch.randn(8, 5), torch.randint(0, K, (8, D)), torch.softmax(torch.randn(8, D, K), -1))
    adv = torch.randn(8)
    joint = credit_advantages("joint", adv, head_out, autoregressive=False)
    assert torch.equal(joint, adv[:, None].expand(-1, D))
    sl = credit_advantages("shared_local", adv, head_out, autoregressive=False)
    assert torch.allclose(sl.mean(1), adv, atol=1e-6)  # sum_i Delta_i = 0: mean effective advantage = A_shared
    assert not torch.allclose(sl, joint)
    sl_mean = credit_advantages("shared_local", adv, head_out, autoregressive=False, surrogate="mean")
    assert torch.allclose(sl_mean, joint, atol=1e-6)  # the note's scalar form: residuals never reach the actor
    sl_head = credit_advantages("shared_local", adv, head_out, autoregressive=False, shared_source="head")
    assert torch.allclose(sl_head.mean(1), head_out.shared, atol=1e-6)
    st = credit_advantages("structured", adv, head_out, autoregressive=False)
    assert torch.allclose(st, head_out.total[:, None].expand(-1, D))


@pytest.mark.parametrize("ratio_scale", [0.05, 0.5])
def test_joint_surrogate_gradient_identity(ratio_scale):
    """All columns equal A_hat -> gradient == textbook joint surrogate's, clipped and unclipped samples alike."""
    torch.manual_seed(0)
    B = 64
    logp_old = torch.randn(B, D, dtype=torch.float64)
    theta = (logp_old + ratio_scale * torch.randn(B, D, dtype=torch.float64)).requires_grad_()
    adv = torch.randn(B, dtype=torch.float64)
    loss, m = ppo_policy_loss(theta, logp_old, adv[:, None].expand(-1, D), 0.2, ratio="joint")
    (g_ours,) = torch.autograd.grad(loss, theta)
    r = torch.exp(theta.sum(1) - logp_old.sum(1))
    textbook = -torch.min(r * adv, torch.clamp(r, 0.8, 1.2) * adv).mean()
    (g_text,) = torch.autograd.grad(textbook, theta)
    assert torch.allclose(g_ours, g_text, atol=1e-12)
    if ratio_scale == 0.5:
        assert 0.1 < float(m["clipfrac"]) < 0.95  # both branches exercised
    # token ratio is a different objective: it must not coincide
    loss_t, _ = ppo_policy_loss(theta, logp_old, adv[:, None].expand(-1, D), 0.2, ratio="token")
    (g_tok,) = torch.autograd.grad(loss_t, theta)
    assert not torch.allclose(g_tok, g_text)


def test_per_dim_gradient_routing():
    """Under the joint ratio, dim i's log-prob gradient is weighted by its own A_i (unclipped region)."""
    B = 5
    logp_old = torch.randn(B, D, dtype=torch.float64)
    theta = logp_old.clone().requires_grad_()  # ratio 1: no clipping
    A = torch.randn(B, D, dtype=torch.float64)
    loss, _ = ppo_policy_loss(theta, logp_old, A, 0.2)
    (g,) = torch.autograd.grad(loss, theta)
    assert torch.allclose(g, -A / B, atol=1e-12)


def test_token_clip_keeps_the_joint_weight_and_clips_each_dim_on_its_own_ratio():
    """``ratio='token_clip'``: dim i's gradient is ``r A_i grad log pi_i`` (the joint weight) unless dim i's
    own ratio is past the clip in A_i's direction; the other dims' ratios never switch it off."""
    torch.manual_seed(1)
    B, eps = 256, 0.2
    logp_old = torch.randn(B, D, dtype=torch.float64)
    theta = (logp_old + 0.3 * torch.randn(B, D, dtype=torch.float64)).requires_grad_()
    A = torch.randn(B, D, dtype=torch.float64)
    loss, m = ppo_policy_loss(theta, logp_old, A, eps, ratio="token_clip")
    (g,) = torch.autograd.grad(loss, theta)
    with torch.no_grad():
        dlogp = theta - logp_old
        r = torch.exp(dlogp.sum(1, keepdim=True))
        r_i = torch.exp(dlogp)
        active = ((A > 0) & (r_i < 1 + eps)) | ((A < 0) & (r_i > 1 - eps))
        expected = -(r * A * active) / B
        joint_clipped = ((A > 0) & (r > 1 + eps)) | ((A < 0) & (r < 1 - eps))
    assert torch.allclose(g, expected, atol=1e-12)
    # the case the variant exists for: dims whose own ratio is in range while the joint one is out
    assert bool((active & joint_clipped).any())
    assert 0.0 < float(m["clipfrac"]) < 1.0


# -- 2. counterfactual is unbiased, whatever the head -------------------------------------------------------
@pytest.mark.parametrize("policy_cls", [IndependentPolicy, AutoregressivePolicy])
@pytest.mark.parametrize("centering", ["policy", "uniform", "none"])
@pytest.mark.parametrize("baseline_value", [0.0, 0.7])
def test_counterfactual_unbiased_by_enumeration(policy_cls, centering, baseline_value):
    R, _, _ = reward_table()
    policy = policy_cls()
    true_pg = expected_gradient(policy, R[:, None].expand(-1, D))
    head_out = head_on_all_actions(random_head(centering), policy)
    adv = (R - baseline_value).float()
    A = credit_advantages("counterfactual", adv, head_out, autoregressive=policy.autoregressive)
    assert (A - adv[:, None]).abs().max() > 0.1  # the baseline really is action dependent
    got = expected_gradient(policy, A)
    assert torch.allclose(got, true_pg, atol=1e-4), (got - true_pg).abs().max()


def test_counterfactual_with_later_dims_is_biased_for_autoregressive():
    """Negative case: an autoregressive policy credited as if independent (later dims in the baseline).

    With uniform or no centering the later dims' terms correlate with ``a^i`` through the policy and the
    gradient is biased. (With policy centering every later term has zero mean given the earlier
    actions, so even the wrong rule happens to stay unbiased; checked here too, so the property is known.)
    """
    R, _, _ = reward_table()
    policy = AutoregressivePolicy()
    true_pg = expected_gradient(policy, R[:, None].expand(-1, D))
    for centering in ("uniform", "none", "policy"):
        head_out = head_on_all_actions(random_head(centering), policy)
        wrong = credit_advantages("counterfactual", R.float(), head_out, autoregressive=False)
        bias = (expected_gradient(policy, wrong) - true_pg).abs().max()
        if centering == "policy":
            assert bias < 1e-4
        else:
            assert bias > 1e-2, centering
        right = credit_advantages("counterfactual", R.float(), head_out, autoregressive=True)
        assert torch.allclose(expected_gradient(policy, right), true_pg, atol=1e-4)


# -- 3. a fitted head recovers the table's parts -------------------------------------------------------------
def fit_head(head, target: torch.Tensor, weights: torch.Tensor, probs: torch.Tensor, steps: int = 3000):
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    feats = FEATURES.expand(len(ACTIONS), -1)
    w = (weights / weights.sum()).float()
    for _ in range(steps):
        out = head(feats, ACTIONS, probs)
        loss = (w * (out.total - target.float()) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head


def test_fitted_head_recovers_known_table():
    torch.manual_seed(0)
    R, r_i, r_ij = reward_table(seed=4)
    head = StructuredAdvantageHead(5, D, K, hidden_size=16, bin_embed_dim=8, rank=8, centering="uniform")
    uniform = torch.full((len(ACTIONS), D, K), 1 / K)
    fit_head(head, R, torch.ones(len(ACTIONS)), uniform)
    out = head(FEATURES.expand(len(ACTIONS), -1), ACTIONS, uniform)
    assert torch.allclose(out.total.double(), R, atol=2e-3)
    # ANOVA decomposition under uniform weights = the uniform centering convention
    Rg = R.view(K, K, K)
    mean = Rg.mean()
    assert abs(float(out.shared[0].detach()) - float(mean)) < 2e-3
    for i in range(D):
        main = Rg.mean(dim=tuple(d for d in range(D) if d != i)) - mean  # [K]
        assert torch.allclose(out.per_dim[:, i].double(), main[ACTIONS[:, i]], atol=2e-3)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        other = [d for d in range(D) if d not in (i, j)]
        m_ij = Rg.mean(dim=tuple(other))  # [K, K] (dims i, j in order)
        inter = m_ij - m_ij.mean(1, keepdim=True) - m_ij.mean(0, keepdim=True) + mean
        assert torch.allclose(out.pair[:, i, j].double(), inter[ACTIONS[:, i], ACTIONS[:, j]], atol=2e-3)
    # and the pure interaction table equals the centered version of the planted r_ij
    planted = r_ij[0, 1] - r_ij[0, 1].mean(1, keepdim=True) - r_ij[0, 1].mean(0, keepdim=True) + r_ij[0, 1].mean()
    got = out.pair[:, 0, 1].double().view(K, K, K)[:, :, 0]
    assert torch.allclose(got, planted, atol=2e-3)


# -- 4. exact gradient variance per mode ---------------------------------------------------------------------
def gradient_moments(policy, per_dim_adv: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Mean and total variance of the single-sample estimator g(a) = sum_i A_i(a) grad log pi_i(a)."""
    logp, _ = policy.log_probs()
    pi = logp.sum(1).exp().detach()
    grads = []
    for n in range(len(ACTIONS)):
        g = torch.autograd.grad((per_dim_adv[n].detach().double() * logp[n]).sum(), policy.params(), retain_graph=True)
        grads.append(torch.cat([x.flatten() for x in g]))
    G = torch.stack(grads)  # [27, P]
    mean = (pi[:, None] * G).sum(0)
    var = float((pi * ((G - mean) ** 2).sum(1)).sum())
    return mean, var


def test_exact_gradient_variance_per_mode(capsys):
    R, _, _ = reward_table(seed=5, pairwise=False)  # additive table
    policy = IndependentPolicy(seed=6)
    logp, probs = policy.log_probs()
    pi = logp.sum(1).exp().detach()
    adv = R - (pi * R).sum()  # exact A_hat = R - V
    torch.manual_seed(0)
    head = StructuredAdvantageHead(5, D, K, hidden_size=16, bin_embed_dim=8, rank=4, centering="policy")
    fit_head(head, adv, pi, probs.detach().float(), steps=2000)
    head_out = head(FEATURES.expand(len(ACTIONS), -1), ACTIONS, probs.detach().float())
    loss, _ = head_loss(head_out, adv.float(), mask=None)
    true_pg, _ = gradient_moments(policy, R[:, None].expand(-1, D))
    rows = {}
    for mode in ("joint", "shared_local", "structured", "counterfactual"):
        A = credit_advantages(mode, adv.float(), head_out, autoregressive=False)
        mean, var = gradient_moments(policy, A)
        rows[mode] = (var, float((mean - true_pg).norm()))
    with capsys.disabled():
        print("\nexact single-sample gradient variance (additive table, fitted head):")
        for mode, (var, bias) in rows.items():
            print(f"  {mode:15s} variance {var:9.5f}   |bias| {bias:.2e}")
    assert rows["counterfactual"][0] <= rows["joint"][0]
    assert rows["counterfactual"][0] < 0.5 * rows["joint"][0]  # other dims' noise is removed
    assert rows["joint"][1] < 1e-6 and rows["counterfactual"][1] < 1e-4


# -- the fitted baseline scale (credit.baseline_scale: fitted) ---------------------------------------------
@pytest.mark.parametrize("policy_cls", [IndependentPolicy, AutoregressivePolicy])
@pytest.mark.parametrize("beta", [0.0, 0.3, 1.7])
def test_a_scaled_counterfactual_baseline_stays_unbiased(policy_cls, beta):
    """Any constant times the baseline is still a baseline without a^i: the exact expected gradient is the
    true one (a batch-fitted scale is such a constant for every sample, up to O(1/B))."""
    R, _, _ = reward_table()
    policy = policy_cls()
    true_pg = expected_gradient(policy, R[:, None].expand(-1, D))
    head_out = head_on_all_actions(random_head("policy"), policy)
    c = counterfactual_baseline(head_out, autoregressive=policy.autoregressive)
    got = expected_gradient(policy, R[:, None].float() - beta * c)
    assert torch.allclose(got, true_pg, atol=1e-4)


def test_fitted_scale_never_adds_variance_and_keeps_a_good_baseline():
    from vla_structppo.algo import baseline_scale

    g = torch.Generator().manual_seed(0)
    adv = torch.randn(4096, generator=g, dtype=torch.float64)
    good = (0.8 * adv + 0.1 * torch.randn(4096, generator=g, dtype=torch.float64))[:, None]  # tracks A_hat
    noise = 3.0 * torch.randn(4096, 1, generator=g, dtype=torch.float64)  # a head that explains nothing
    anti = -adv[:, None]  # anti-correlated: subtracting it would double the variance
    c = torch.cat([good, noise, anti], dim=1)
    beta = baseline_scale(adv, c)
    assert 0.9 < beta[0] <= 1.0 and beta[1] < 0.05 and beta[2] == 0.0
    var = torch.var(adv[:, None] - beta * c, dim=0)
    assert torch.all(var <= torch.var(adv) + 1e-12)
    assert torch.var(adv - c[:, 1]) > 5 * torch.var(adv)  # unscaled, the useless head adds much noise
    mask = torch.zeros(4096, dtype=torch.bool)
    mask[:100] = True  # only valid rows count
    assert torch.allclose(baseline_scale(adv, c, mask), baseline_scale(adv[:100], c[:100]))


# -- advantage normalisation: one rule for every mode ------------------------------------------------------
def test_normalisation_centres_each_dim_and_scales_by_the_gae_advantage():
    from vla_structppo.algo import normalize_advantages

    g = torch.Generator().manual_seed(0)
    adv = 3.0 + 2.0 * torch.randn(512, generator=g, dtype=torch.float64)  # GAE left a mean in A_hat
    joint = adv[:, None].expand(-1, 4)
    out = normalize_advantages(joint, adv)
    assert torch.allclose(out[:, 0], (adv - adv.mean()) / (adv.std() + 1e-8))  # CleanRL's rule
    # counterfactual-like credit whose baseline already removed the mean: no offset is left on any dim
    baseline = adv.mean() + 0.5 * torch.randn(512, 4, generator=g, dtype=torch.float64)
    cf = normalize_advantages(adv[:, None] - baseline, adv)
    assert torch.allclose(cf.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(cf.std(0), (adv[:, None] - baseline).std(0) / adv.std())  # the same scale as joint
    mask = torch.zeros(512, dtype=torch.bool)
    mask[:300] = True  # only valid rows count, and two "ranks" summing their statistics agree with one
    full = normalize_advantages(joint, adv, mask=mask)
    assert torch.allclose(full[:300], normalize_advantages(joint[:300], adv[:300]))
