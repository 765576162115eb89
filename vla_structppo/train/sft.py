"""Behaviour cloning of a VLA on demonstrations: cross-entropy on the D action tokens, on Accelerate.

Reads top to bottom: check the config and the dataset (before any weights load), load the policy
(its action bounds from the dataset's q01 / q99 or the checkpoint's), tokenise every sample once,
then epochs x minibatches of AdamW on the adapter, logging per epoch, and one checkpoint at the end
that ``vla-structppo train init_from=...`` starts PPO from.

The loss is ``-logp`` of the target bins under the policy's *restricted* softmax (over the K bin
tokens only), the same distribution PPO samples from, so a cloned policy's greedy action is exactly
the ``argmax`` this loss pushes up.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn

from ..checkpoints import build_vla_policy, layout, resolve, save_agent, write_atomic_dir
from ..checkpoints.rundir import RunLock, run_in_dir
from ..checkpoints.store import staging_dirs, start_dir
from ..config import ConfigError, TrainConfig, to_yaml
from ..data.chunks import chunk_targets
from ..data.demos import (
    ActionStats,
    DemoDatasetError,
    action_array,
    load_demos,
    recording_mismatches,
)
from ..data.sources import resolve_demos
from ..policies.base import EvalOutput, select_batch
from .accel import claim, make_accelerator
from .metrics_log import MetricsLog
from .trackers import start_trackers

__all__ = ["SFTResult", "sft"]

# samples per processor call while tokenising (bounds the memory of one call, not of the result)
_PREPARE_CHUNK = 64
# sft.preprocess=auto: up to this many samples are processed once up front (fast epochs); more, per minibatch
UPFRONT_MAX_SAMPLES = 20_000


@dataclass
class SFTResult:
    run_dir: Path
    policy: Any  # the VLAPolicy, unwrapped from Accelerate
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


class _Cloner(nn.Module):
    """The policy behind one ``forward``: DDP synchronises gradients only through ``forward``, and
    ``VLAPolicy.evaluate`` is a method, not the module's forward."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, inputs: dict[str, torch.Tensor], bins: torch.Tensor) -> EvalOutput:
        return self.policy.evaluate(inputs, bins)


# -- checks that need no weights -----------------------------------------------------------------------
def _check_config(cfg: TrainConfig) -> None:
    cfg.validate()
    s = cfg.sft
    problems = []
    if cfg.policy.type != "vla":
        problems.append(f"sft clones a VLA: set policy.type=vla (got {cfg.policy.type!r})")
    if not s.dataset:
        problems.append("sft.dataset is not set: give the dir of a demonstration dataset "
                        "(make one with `vla-structppo demos RECIPE sft.dataset=PATH`)")
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def _load_dataset(cfg: TrainConfig, where: Path) -> tuple[Any, np.ndarray, ActionStats]:
    """The (possibly truncated) dataset at ``where``, its actions ``[N, D]`` and statistics, checked against the env."""
    ds, stats = load_demos(where)
    if cfg.sft.max_samples and cfg.sft.max_samples < len(ds):
        ds = ds.select(range(cfg.sft.max_samples))
    actions = action_array(ds)
    D = cfg.env.action_dims
    if actions.shape[1] != D or stats.action_dims != D:
        raise DemoDatasetError(
            f"the dataset {cfg.sft.dataset} has actions of width {actions.shape[1]} but env.action_dims={D}; "
            f"set env.action_dims={actions.shape[1]} (and a model whose action tokenizer has that many dims) "
            "or use demonstrations of this action space")
    return ds, actions, stats


# -- the loop --------------------------------------------------------------------------------------
def sft(cfg: TrainConfig) -> SFTResult:
    """Behaviour-clone ``cfg.sft.dataset`` into the VLA of ``cfg.model``; returns run dir, policy, metrics."""
    _check_config(cfg)
    s = cfg.sft
    where = resolve_demos(s.dataset, image_key=s.image_key, action_key=s.action_key, revision=s.dataset_revision)
    ds, actions, stats = _load_dataset(cfg, where)
    changed = [m for m in recording_mismatches(where, cfg) if m.startswith("env.")]
    if changed:
        warnings.warn(f"the demonstrations at {cfg.sft.dataset} were recorded with other env settings than this "
                      f"recipe's ({'; '.join(changed)}): the policy will see other pictures or actions under "
                      "PPO and evaluation than it was cloned on", stacklevel=2)
    accelerator = make_accelerator(cfg)
    lock = claim(cfg, accelerator)
    started = False
    try:
        result = _sft(cfg, ds, actions, stats, accelerator, lock)
        started = True
        return result
    finally:
        if lock is not None:
            lock.release(keep_empty=started)


def _sft(cfg: TrainConfig, ds: Any, actions: np.ndarray, stats: ActionStats, accelerator: Accelerator,
         lock: RunLock | None) -> SFTResult:
    rank, world = accelerator.process_index, accelerator.num_processes
    run_dir = cfg.run_dir
    set_seed(cfg.seed)  # identical LoRA init on every process
    bounds = (stats.q01, stats.q99) if cfg.sft.bounds == "dataset" else None
    if bounds is not None and cfg.env.id == "structured" and not _spans_moves(bounds, cfg):
        warnings.warn("sft.bounds=dataset re-bins the actions to the dataset's q01/q99, but the structured env "
                      "reads bins on its own grid [-max_move, max_move]; a policy cloned this way acts on the "
                      "wrong grid under PPO there. Use sft.bounds=model with a tokenizer spanning the env's moves.",
                      stacklevel=2)
    start = resolve(cfg.init_from) if cfg.init_from else None
    policy = build_vla_policy(cfg, start, bounds=bounds)  # preflight first: no weights load on a bad model
    # the run is known to start: only now is its dir written
    if lock is not None:
        run_in_dir(cfg, lock)
        (run_dir / layout.CONFIG).write_text(to_yaml(cfg))
    accelerator.wait_for_everyone()
    ds, actions, bins = _targets(cfg, policy.action_tokenizer, ds, actions)  # [N, D] (D = H x A with chunks)
    # small datasets are processed once; large ones per minibatch from the memory-mapped arrow files
    per_batch = cfg.sft.preprocess == "per_batch" or (cfg.sft.preprocess == "auto" and len(ds) > UPFRONT_MAX_SAMPLES)
    inputs = _OnDemandInputs(policy, ds) if per_batch else _tokenize(policy, ds)
    actions_t = torch.as_tensor(actions, dtype=torch.float32)

    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.sft.learning_rate, weight_decay=cfg.sft.weight_decay)
    model, optimizer = accelerator.prepare(_Cloner(policy), optimizer)
    core = accelerator.unwrap_model(model).policy
    decode_table = _decode_table(core)

    # one generator, same seed on every process: all ranks agree on each epoch's global order
    generator = torch.Generator().manual_seed(cfg.seed)
    N, B = len(bins), cfg.sft.batch_size
    steps_per_epoch = (N + B - 1) // B
    log = MetricsLog(run_dir / layout.METRICS, accelerator.is_main_process)  # SFT does not resume
    start_trackers(accelerator, cfg, "sft")
    from tqdm.auto import tqdm

    pbar = tqdm(total=cfg.sft.num_epochs * steps_per_epoch, desc=f"sft {cfg.name}", unit="step", dynamic_ncols=True,
                disable=not (accelerator.is_main_process and cfg.logging.progress_bar))
    step = 0
    model.train()
    for epoch in range(1, cfg.sft.num_epochs + 1):
        t_start = time.perf_counter()
        order = torch.randperm(N, generator=generator)
        totals = _epoch(model, optimizer, accelerator, inputs, bins, actions_t, decode_table, order, B, pbar)
        step += steps_per_epoch
        n_all = max(totals[3].item(), 1.0)
        metrics = {
            "sft/epoch": float(epoch),
            "sft/step": float(step),
            "sft/loss": totals[0].item() / n_all,
            "sft/token_accuracy": totals[1].item() / n_all,
            "sft/l1": totals[2].item() / n_all,
            "sft/learning_rate": optimizer.param_groups[0]["lr"],
            "time/epoch_s": time.perf_counter() - t_start,
        }
        log.append(metrics)
        accelerator.log(metrics, step=step)
        pbar.set_postfix(epoch=epoch, loss=f"{metrics['sft/loss']:.3f}", acc=f"{metrics['sft/token_accuracy']:.3f}",
                         l1=f"{metrics['sft/l1']:.3f}")
    pbar.close()

    # the per-epoch numbers average over an epoch of changing weights: measure the final policy once
    model.eval()
    final = _evaluate(core, inputs, bins, actions_t, decode_table, B, rank, world, accelerator)
    log.records[-1].update(final)
    log.rewrite()
    checkpoint = _save(accelerator, core, cfg, step)
    accelerator.end_training()
    return SFTResult(run_dir, core, log.records, checkpoint)


def _epoch(model: nn.Module, optimizer, accelerator: Accelerator, inputs: Any, bins: torch.Tensor,
           actions: torch.Tensor, decode_table: torch.Tensor, order: torch.Tensor, batch_size: int, pbar: Any
           ) -> torch.Tensor:
    """One pass over the dataset in the global ``order``, each process taking its share of every minibatch;
    returns ``[loss * n, correct tokens, L1 * n, n]`` summed over processes."""
    rank, world = accelerator.process_index, accelerator.num_processes
    sums = torch.zeros(4, dtype=torch.float64)  # loss * n, correct tokens, L1 * n * D, n
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size][rank::world]  # this process's share of the global minibatch
        if len(idx) == 0:  # fewer samples than processes in the last minibatch: still join the all-reduce
            idx = order[start:start + 1]
            weight = 0.0
        else:
            weight = 1.0
        batch = {k: v.to(accelerator.device) for k, v in _select(inputs, idx).items()}
        out = model(batch, bins[idx].to(accelerator.device))
        loss = -out.logp.mean()
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss * weight)
        optimizer.step()
        with torch.no_grad():
            n = len(idx) * weight
            pred = out.bin_probs.argmax(-1).cpu()
            l1 = (decode_table[pred, torch.arange(pred.shape[1])] - actions[idx]).abs().mean()
            accuracy = (pred == bins[idx]).float().mean()
            sums += torch.tensor([loss.item() * n, accuracy.item() * n, l1.item() * n, n], dtype=torch.float64)
        pbar.update(1)
    return accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu() if world > 1 else sums


# -- pieces ----------------------------------------------------------------------------------------
def _spans_moves(bounds: tuple[list[float], list[float]], cfg: TrainConfig) -> bool:
    """Whether ``bounds`` are the structured env's move range, where bin k of the tokenizer is bin k of the env."""
    move = cfg.env.structured.max_move if cfg.env.structured.max_move is not None else 1.0
    return bool(np.allclose(bounds[0], -move) and np.allclose(bounds[1], move))


def _tokenize(policy: Any, ds: Any) -> dict[str, torch.Tensor]:
    """Every sample through the processor once (on CPU; minibatches move to the device as they run)."""
    rows = ds.with_format("numpy")
    parts = []
    for start in range(0, len(ds), _PREPARE_CHUNK):
        chunk = rows[start:start + _PREPARE_CHUNK]
        images = np.stack([_rgb_uint8(img) for img in chunk["image"]])
        parts.append({k: v.cpu() for k, v in policy.prepare({"image": images,
                                                             "instruction": list(chunk["instruction"])}).items()})
    return policy.collate(parts)


class _OnDemandInputs:
    """Policy inputs prepared per minibatch from the dataset (memory-mapped arrow): memory holds one batch of
    pictures, whatever the dataset's size (``sft.preprocess: per_batch``)."""

    def __init__(self, policy: Any, ds: Any) -> None:
        self.policy, self.rows = policy, ds.with_format("numpy")

    def select(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        chunk = self.rows[idx.tolist()]
        images = np.stack([_rgb_uint8(img) for img in chunk["image"]])
        prepared = self.policy.prepare({"image": images, "instruction": list(chunk["instruction"])})
        return {k: v.cpu() for k, v in prepared.items()}


def _select(inputs: Any, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return inputs.select(idx) if isinstance(inputs, _OnDemandInputs) else select_batch(inputs, idx)


def _rgb_uint8(image: Any) -> np.ndarray:
    """One decoded image as uint8 ``[H, W, 3]`` (a grey or RGBA PNG is converted, not rejected)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise DemoDatasetError(f"an image of shape {a.shape} is not an [H, W, 3] picture")
    if a.dtype != np.uint8:
        raise DemoDatasetError(f"images must be uint8, got {a.dtype}")
    return a[..., :3]


def _decode_table(policy: Any) -> torch.Tensor:
    """``[K, D]`` continuous value of bin k in dim i, so ``table[bins, arange(D)]`` decodes a batch on torch (the
    step's table repeated for every step of a chunk: token i is dim ``i % A``)."""
    tok = policy.action_tokenizer
    grid = np.repeat(np.arange(tok.num_bins)[:, None], tok.action_dims, axis=1)
    return torch.as_tensor(np.tile(tok.decode(grid), (1, policy.chunk_size)), dtype=torch.float32)


def _targets(cfg: TrainConfig, tokenizer: Any, ds: Any, actions: np.ndarray) -> tuple[Any, np.ndarray, torch.Tensor]:
    """The samples and their targets: every step's action, or with action chunks the next H actions of its
    episode (data/chunks.py); returns ``(dataset rows, continuous targets [N, D], bins [N, D])``."""
    H = cfg.action.chunk_size
    if H > 1:
        if "episode_index" not in ds.column_names:
            raise DemoDatasetError(f"action.chunk_size={H} builds chunks from each episode's steps, but the dataset "
                                   f"{cfg.sft.dataset} has no episode_index column; record it with vla-structppo demos")
        chunks, rows = chunk_targets(actions, np.asarray(ds["episode_index"]), H, cfg.sft.chunk_tail)
        if len(rows) == 0:
            raise DemoDatasetError(f"no episode of {cfg.sft.dataset} is longer than action.chunk_size={H}: nothing to "
                                   "clone with sft.chunk_tail=drop")
        ds = ds.select(rows.tolist()) if len(rows) < len(ds) else ds
        actions = chunks.reshape(len(rows), -1)  # [N, H * A], step-major
    bins = tokenizer.encode(actions.reshape(len(actions), H, -1)).reshape(len(actions), -1)
    return ds, actions, torch.as_tensor(bins, dtype=torch.long)


@torch.no_grad()
def _evaluate(policy: Any, inputs: dict[str, torch.Tensor], bins: torch.Tensor, actions: torch.Tensor,
              table: torch.Tensor, batch_size: int, rank: int, world: int, accelerator: Accelerator
              ) -> dict[str, float]:
    """Teacher-forced token accuracy and decoded L1 of the final policy over the whole dataset."""
    sums = torch.zeros(3, dtype=torch.float64)
    D = bins.shape[1]
    for start in range(rank * batch_size, len(bins), batch_size * world):
        idx = torch.arange(start, min(start + batch_size, len(bins)))
        batch = {k: v.to(accelerator.device) for k, v in _select(inputs, idx).items()}
        pred = policy.evaluate(batch, bins[idx].to(accelerator.device)).bin_probs.argmax(-1).cpu()
        sums += torch.tensor([(pred == bins[idx]).sum().item(),
                              (table[pred, torch.arange(D)] - actions[idx]).abs().sum().item(), len(idx) * D],
                             dtype=torch.float64)
    if world > 1:
        sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
    n = max(sums[2].item(), 1.0)
    return {"sft/final_token_accuracy": sums[0].item() / n, "sft/final_l1": sums[1].item() / n}


def _save(accelerator: Accelerator, policy: Any, cfg: TrainConfig, step: int) -> Path:
    """``checkpoints/<step>/``: adapter (or model) + processor + action tokenizer + config.yaml, written
    atomically; the PPO trainer's ``init_from`` reads exactly these."""
    tmp, final = staging_dirs(cfg.run_dir, step)
    if accelerator.is_main_process:
        start_dir(tmp)
        save_agent(policy, tmp, cfg)
        write_atomic_dir(tmp, final)
    accelerator.wait_for_everyone()
    return final
