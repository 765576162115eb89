"""VLA policy throughput: KV-cached ``act()`` vs ``generate()``, PPO update speed, the structured head's
share of the update, and peak memory.

    OMP_NUM_THREADS=1 python benchmarks/vla_throughput.py            # tiny + mid-size (~80M) llava
    OMP_NUM_THREADS=1 python benchmarks/vla_throughput.py --quick    # tiny model only, few repeats

Models are random-weight llava VLAs built offline by ``vla_structppo.testing.tiny_vlms`` into a temp dir and
loaded through ``load_vla_policy`` (the real loading path, LoRA included), so the timings include peft's
adapter overhead exactly as training sees it. Observations come from the image-mode structured env.

What is measured (medians over ``--repeats`` after ``--warmup`` untimed calls):

* act: ``policy.act(inputs)`` under ``no_grad``; one call is B env steps.
* generate: ``model.generate`` on the same model and inputs, restricted to the bin tokens by a logits
  processor, exactly D new tokens, sampling; its tokens are checked to all be bin tokens.
* update: forward + backward of the real PPO loss (``train.ppo_update.ppo_loss``: policy + value + head + entropy)
  on a minibatch of M samples from a short rollout (no optimizer step).
* head: forward + backward of the structured head's part of that loss alone (``adv_head`` + ``head_loss``
  on the same features), and, as a cross-check, the update time with the head removed.
* memory: one extra untimed call; CPU — peak resident set size sampled during it (the whole process:
  weights, torch, Python; the JSON's ``rise`` fields, peak minus RSS at the call's start, understate the
  call's own need once earlier calls have grown the allocator's cache, so the tables show the peak);
  CUDA — ``torch.cuda.max_memory_allocated`` after a reset.

Writes ``benchmarks/results/vla_throughput.json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# name -> tiny.build_tiny_vla kwargs. "mid" lands at ~80M parameters: a 32000-token vocabulary (Llama's)
# with untied input/output embeddings is ~41M of it, 8 decoder layers ~30M, a 4-layer SigLIP ~7M.
MODELS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "mid": dict(text_hidden=640, text_layers=8, vision_hidden=384, vision_layers=4, vocab_size=32000,
                image_size=64, patch_size=8),
}
# timed calls per measurement when --repeats is not given: the tiny model's calls take milliseconds and
# scatter by 2x under load from other processes, so it gets many; the mid-size model's take seconds
DEFAULT_REPEATS = {"tiny": 25, "mid": 5}
ACTION_DIMS, NUM_BINS = 7, 256
RESULTS = Path(__file__).resolve().parent / "results" / "vla_throughput.json"


# -- measurement helpers ------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fns: dict[str, Any], device: torch.device, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Wall seconds of each ``fns[name]()``, ``repeats`` samples each, after ``warmup`` untimed calls each.

    The functions are interleaved (a, b, a, b, ...) so that load from other processes on a shared machine
    hits every contender alike instead of whichever happened to run during a busy spell.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - t0)
    return samples


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def peak_memory(fn, device: torch.device) -> PeakMemory:
    """One extra, untimed call of ``fn`` under :class:`PeakMemory` (the sampler thread would perturb timings)."""
    with PeakMemory(device) as mem:
        fn()
    return mem


def _rss_bytes() -> int:
    # current (not peak) RSS: ru_maxrss only ever grows, so it cannot attribute a peak to one phase
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory of the enclosed phase, in MiB.

    CUDA: ``max_memory_allocated`` since a reset (exact, tensors only). CPU: a thread samples the RSS every
    2 ms; ``peak`` is the highest RSS seen and ``rise`` the peak minus the RSS at entry (what the phase
    itself needed on top of the already-loaded model). Sampling can miss sub-2 ms spikes; it is still far
    closer than ``ru_maxrss``, which is the process's all-time peak.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = self.rise = float("nan")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start = _rss_bytes()
        self._max = self._start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._max = max(self._max, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._max, _rss_bytes())
        self.peak = peak / 2**20
        self.rise = (peak - self._start) / 2**20


# -- model / data ---------------------------------------------------------------------------------
def build_agent(name: str, root: Path, device: torch.device, num_envs: int, seed: int):
    """Write the model, load it the way training does, and return ``(cfg, agent, envs)``."""
    from vla_structppo.checkpoints import build_agent as build
    from vla_structppo.config import load_config
    from vla_structppo.envs import make_env
    from vla_structppo.testing.tiny_vlms import save_tiny_vla, write_action_tokenizer

    model_dir = root / name
    save_tiny_vla("llava", model_dir, seed, **MODELS[name])
    write_action_tokenizer(model_dir, ACTION_DIMS, NUM_BINS)
    cfg = load_config(None, [
        "policy.type=vla", f"model.name_or_path={model_dir}", "env.observation=image",
        f"env.action_dims={ACTION_DIMS}", f"env.num_bins={NUM_BINS}", f"env.num_envs={num_envs}",
        f"seed={seed}",
    ])
    envs = make_env(cfg.env, num_envs, seed=seed)
    agent = build(cfg).to(device)
    return cfg, agent, envs


def rollout_batch(cfg, agent, envs, device: torch.device, seed: int) -> dict:
    """One rollout step of every env, turned into the update's batch the way ``train`` does it."""
    from vla_structppo.algo import compute_gae, credit_advantages, normalize_advantages
    from vla_structppo.train.advantages import flatten_rollout
    from vla_structppo.train.rollout import RolloutState, collect_rollout

    obs, _ = envs.reset(seed=seed)
    state = RolloutState(obs, np.zeros(envs.num_envs, bool))
    agent.eval()
    rollout = collect_rollout(agent, envs, state, 1, device)
    adv, ret = compute_gae(rollout.rewards, rollout.values, rollout.next_value, rollout.terminated,
                           rollout.truncated, gamma=cfg.ppo.gamma, gae_lambda=cfg.ppo.gae_lambda,
                           final_values=rollout.final_values, valid=rollout.valid)
    batch = flatten_rollout(rollout, adv, ret)
    with torch.no_grad():
        head_out = agent.adv_head(batch["features"], batch["actions"], batch["bin_probs"])
    credit = credit_advantages(cfg.credit.mode, batch["advantages"], head_out, autoregressive=True,
                               shared_source=cfg.credit.shared_source, surrogate=cfg.credit.surrogate,
                               action_dims=cfg.env.action_dims)
    batch["credit"] = normalize_advantages(credit, batch["advantages"], mask=batch["valid"])
    return batch


class BinOnly:
    """``LogitsProcessor``: every non-bin logit to -inf, so ``generate`` samples what ``act`` samples."""

    def __init__(self, bin_ids: torch.Tensor) -> None:
        self.bin_ids = bin_ids

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(scores, float("-inf"))
        out[:, self.bin_ids] = scores[:, self.bin_ids]
        return out


def _generate_fn(policy, inputs: dict[str, torch.Tensor], do_sample: bool):
    from transformers import LogitsProcessor, LogitsProcessorList

    # subclass at call time: transformers type-checks the list's members
    proc = type("BinOnlyLogitsProcessor", (BinOnly, LogitsProcessor), {})(policy.bin_token_ids)
    D = policy.action_dims
    kwargs = dict(logits_processor=LogitsProcessorList([proc]), max_new_tokens=D, min_new_tokens=D,
                  do_sample=do_sample, pad_token_id=policy.pad_token_id)
    if do_sample:  # plain softmax sampling, as act() does: no top-k / top-p truncation from the config
        kwargs.update(temperature=1.0, top_k=0, top_p=1.0)

    def run() -> torch.Tensor:
        out = policy.model.generate(**inputs, **kwargs)
        return out[:, inputs["input_ids"].shape[1]:]

    return run


# -- the phases -------------------------------------------------------------------------------------
def bench_rollout(policy, envs, batch_sizes, device, warmup, repeats, seed) -> list[dict]:
    from vla_structppo.envs import take_obs

    obs, _ = envs.reset(seed=seed)
    bins = policy.bin_token_ids
    rows = []
    for B in batch_sizes:
        inputs = policy.prepare(take_obs(obs, np.arange(B)))
        with torch.no_grad():
            # correctness first: greedy generate must pick exactly act(deterministic)'s tokens
            greedy = _generate_fn(policy, inputs, do_sample=False)()
            det = bins[policy.act(inputs, deterministic=True).actions]
            sample = _generate_fn(policy, inputs, do_sample=True)
            toks = sample()
            all_bins = bool(torch.isin(toks, bins).all()) and toks.shape[1] == policy.action_dims
            act = functools.partial(policy.act, inputs)
            t = timed({"act": act, "generate": sample}, device, warmup, repeats)
            mem_act, mem_gen = peak_memory(act, device), peak_memory(sample, device)
        t_act, t_gen = med(t["act"]), med(t["generate"])
        # each act call is timed right next to a generate call: the median of those pairs' ratios is less
        # sensitive to load drifting over the run than the ratio of the two medians
        paired = med([g / a for a, g in zip(t["act"], t["generate"], strict=True)])
        rows.append(dict(batch=B, prompt_len=int(inputs["input_ids"].shape[1]),
                         act_s=t_act, act_samples=t["act"], act_steps_per_s=B / t_act,
                         generate_s=t_gen, generate_samples=t["generate"], generate_steps_per_s=B / t_gen,
                         speedup=t_gen / t_act, speedup_paired=paired, generate_all_bins=all_bins,
                         greedy_match=bool(torch.equal(greedy, det)),
                         act_peak_mib=mem_act.peak, act_rise_mib=mem_act.rise,
                         generate_peak_mib=mem_gen.peak, generate_rise_mib=mem_gen.rise))
        print(f"  act B={B}: {B / t_act:8.1f} steps/s  generate: {B / t_gen:8.1f} steps/s  "
              f"x{t_gen / t_act:.2f} (paired x{paired:.2f})", flush=True)
    return rows


def _update_step(agent, cfg, batch: dict, idx: torch.Tensor) -> None:
    """Forward + backward of the PPO loss on minibatch ``idx`` (what one micro-batch of an update does)."""
    from vla_structppo.train.ppo_update import ppo_loss

    agent.zero_grad(set_to_none=True)
    loss, _, _ = ppo_loss(agent, batch, idx, cfg)
    loss.backward()


def _head_step(agent, cfg, batch: dict, idx: torch.Tensor, features: torch.Tensor) -> None:
    """Forward + backward of the structured head's part of the loss alone (``adv_coef * head_loss``)."""
    from vla_structppo.algo.losses import head_loss

    p = cfg.ppo
    agent.adv_head.zero_grad(set_to_none=True)
    out = agent.adv_head(features, batch["actions"][idx], batch["bin_probs"][idx])
    h, _ = head_loss(out, batch["advantages"][idx], lambda_pair=p.lambda_pair, lambda_1=p.lambda_1,
                     lambda_2=p.lambda_2, mask=batch["valid"][idx])
    (p.adv_coef * h).backward()


class _WithoutHead:
    """``agent`` with ``adv_head`` removed while inside: Agent.forward and _loss then skip every head term."""

    def __init__(self, agent) -> None:
        self.agent, self.head = agent, agent.adv_head

    def __enter__(self) -> None:
        self.agent.adv_head = None

    def __exit__(self, *exc: object) -> None:
        self.agent.adv_head = self.head


def bench_update(cfg, agent, batch, minibatches, device, warmup, repeats) -> list[dict]:
    agent.train()
    rows = []
    for M in minibatches:
        idx = torch.arange(M, device=batch["actions"].device)
        # the head reads the policy pass's features detached (head.stop_gradient, on by default), so the
        # head's forward + backward on those features is everything the head adds to the update step
        with torch.no_grad():
            feats = agent.policy.evaluate({k: v[idx] for k, v in batch["obs"].items()},
                                          batch["actions"][idx]).features
        step = functools.partial(_update_step, agent, cfg, batch, idx)
        head_step = functools.partial(_head_step, agent, cfg, batch, idx, feats)

        def step_without_head(step=step) -> None:  # A/B cross-check: the same update minus the head
            with _WithoutHead(agent):
                step()

        t = timed({"update": step, "head": head_step, "no_head": step_without_head}, device, warmup, repeats)
        mem = peak_memory(step, device)
        t_upd, t_head, t_nohead = med(t["update"]), med(t["head"]), med(t["no_head"])
        rows.append(dict(minibatch=M, update_s=t_upd, update_samples=t["update"], samples_per_s=M / t_upd,
                         head_s=t_head, head_samples=t["head"], head_share=t_head / t_upd,
                         update_without_head_s=t_nohead, update_without_head_samples=t["no_head"],
                         ab_head_share=(t_upd - t_nohead) / t_upd, peak_mib=mem.peak, rise_mib=mem.rise))
        print(f"  update M={M}: {M / t_upd:7.2f} samples/s  head {100 * t_head / t_upd:.2f}% "
              f"(A/B {100 * (t_upd - t_nohead) / t_upd:+.1f}%)", flush=True)
    agent.zero_grad(set_to_none=True)
    return rows


def bench_model(name, args, device, root) -> dict:
    t0 = time.perf_counter()
    n_envs = max(max(args.batch_sizes), max(args.minibatches))
    cfg, agent, envs = build_agent(name, root, device, n_envs, args.seed)
    policy = agent.policy
    params = sum(p.numel() for p in policy.base_model.parameters())
    trainable = sum(p.numel() for p in agent.parameters() if p.requires_grad)
    head_params = sum(p.numel() for p in agent.adv_head.parameters())
    print(f"{name}: {params / 1e6:.1f}M params, {trainable / 1e6:.2f}M trainable "
          f"(LoRA + value + head), head {head_params / 1e3:.0f}k", flush=True)
    torch.manual_seed(args.seed)
    repeats = args.repeats or (2 if args.quick else DEFAULT_REPEATS[name])
    rollout = bench_rollout(policy, envs, args.batch_sizes, device, args.warmup, repeats, args.seed)
    batch = rollout_batch(cfg, agent, envs, device, args.seed)
    update = bench_update(cfg, agent, batch, args.minibatches, device, args.warmup, repeats)
    envs.close()
    return dict(model=name, arch="llava", params=params, trainable_params=trainable, head_params=head_params,
                build_kwargs=MODELS[name], repeats=repeats, rollout=rollout, update=update,
                ru_maxrss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                wall_s=time.perf_counter() - t0)


# -- output ---------------------------------------------------------------------------------------
def tables(results: list[dict]) -> str:
    lines = ["| model | B | act env-steps/s | generate env-steps/s | act / generate (paired) | "
             "gen. tokens all bins | greedy = act(det.) | act peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        label = f"{r['model']} ({r['params'] / 1e6:.1f}M)"
        for x in r["rollout"]:
            lines.append(f"| {label} | {x['batch']} | {x['act_steps_per_s']:.1f} | {x['generate_steps_per_s']:.1f} | "
                         f"{x['speedup']:.2f}x ({x['speedup_paired']:.2f}x) | {x['generate_all_bins']} | {x['greedy_match']} | "
                         f"{x['act_peak_mib']:.0f} |")
    lines += ["", "| model | minibatch | update samples/s | update s | head fwd+bwd ms | head share | "
              "A/B head share | update peak MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        label = f"{r['model']} ({r['params'] / 1e6:.1f}M)"
        for x in r["update"]:
            lines.append(f"| {label} | {x['minibatch']} | {x['samples_per_s']:.2f} | {x['update_s']:.3f} | "
                         f"{1e3 * x['head_s']:.2f} | {100 * x['head_share']:.2f}% | "
                         f"{100 * x['ab_head_share']:+.1f}% | {x['peak_mib']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model only, 1 warm-up + 2 repeats (smoke test)")
    ap.add_argument("--models", nargs="+", default=None, choices=sorted(MODELS), help="default: tiny mid")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--minibatches", nargs="+", type=int, default=[8, 32])
    ap.add_argument("--warmup", type=int, default=None, help="untimed calls per measurement (default 2)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed calls per measurement (default: tiny 25, mid 5; --quick 2)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None,
                    help=f"JSON path (default {RESULTS.name}; --quick: *_quick.json, so a smoke test never "
                         "overwrites a full run's numbers)")
    args = ap.parse_args()
    args.out = args.out or (RESULTS.with_name(RESULTS.stem + "_quick.json") if args.quick else RESULTS)
    args.models = args.models or (["tiny"] if args.quick else ["tiny", "mid"])
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    machine = dict(device=str(device), torch=torch.__version__, threads=torch.get_num_threads(),
                   omp_num_threads=os.environ.get("OMP_NUM_THREADS"), cpu_count=os.cpu_count(),
                   processor=platform.processor() or platform.machine(),
                   gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    print(f"device {device}, torch {torch.__version__}, {machine['threads']} threads", flush=True)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vla-bench-") as tmp:
        results = [bench_model(name, args, device, Path(tmp)) for name in args.models]
    wall = time.perf_counter() - t0
    print()
    print(tables(results))
    print(f"\ntotal {wall:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(machine=machine, args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   results=results, wall_s=wall)
    args.out.write_text(json.dumps(payload, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
