"""Agents in and out of checkpoints: the one way train, SFT, eval, the pipeline and push load and save.

* :func:`build_agent` — the agent of a config, optionally starting from a checkpoint (``init_from``,
  ``resume``): the VLA gets the checkpoint's adapter (or fully fine-tuned weights) as an argument and
  its base model from :func:`~vla_structppo.checkpoints.locate.base_model_of`; head files present in
  the checkpoint load strictly. The VLA preflight runs once, before any weights load.
* :func:`load_agent` — a checkpoint's agent and config (evaluation, ``predict``), ``overrides`` applied.
* :func:`load_pretrained_agent` — a released VLA (model dir or Hub id) with the recipe's policy settings and
  fresh heads: what ``eval`` measures before any fine-tuning here.
* :func:`save_agent` — policy + heads + ``config.yaml`` into a directory (the caller makes it atomic).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig, apply_overrides, to_yaml
from ..files import check_json
from ..policies.agent import Agent, build_state_policy
from ..policies.mlp import FIRST_LAYER
from .layout import (
    ACTION_TOKENIZER,
    CONFIG,
    ENV_NORMALIZATION,
    HEAD_FILES,
    POLICY_WEIGHTS,
    PROCESSOR,
    README,
    checkpoint_kind,
)
from .locate import base_model_of, read_config, resolve, verify
from .store import CheckpointError, load_module, save_module

__all__ = ["build_agent", "build_vla_policy", "load_agent", "load_pretrained_agent", "preflight_vla", "save_agent",
           "vla_sources"]


# -- the VLA ----------------------------------------------------------------------------------------
def vla_sources(cfg: TrainConfig, start_from: Path | None):
    """Where the VLA of ``cfg`` comes from: its base model (``model.name_or_path``, else the start
    checkpoint's base) and, when starting from a checkpoint, that checkpoint's adapter or weights,
    processor and action tokenizer."""
    from ..policies.vla_loading import VLASources

    m = cfg.model
    if start_from is None:
        if not m.name_or_path:
            raise CheckpointError("no model: set model.name_or_path (a VLA dir or Hub id) or init_from a VLA checkpoint")
        local = Path(m.name_or_path)
        tokenizer = local if (local / ACTION_TOKENIZER).is_file() else None
        return VLASources(m.name_or_path, m.name_or_path, action_tokenizer=tokenizer, revision=m.revision)
    verify(start_from)
    kind = checkpoint_kind(start_from)
    if kind not in ("adapter", "full"):
        raise CheckpointError(f"{start_from} is not a VLA checkpoint (it holds {kind or 'no'} policy weights); "
                              "a VLA starts from a checkpoint with an adapter or a fine-tuned model")
    if not (start_from / ACTION_TOKENIZER).is_file():
        raise CheckpointError(f"{start_from} is missing {ACTION_TOKENIZER}; it is incomplete or was not written by "
                              "vla-structppo (train / sft write adapter, heads, action tokenizer and processor)")
    base, revision = (m.name_or_path, m.revision) if m.name_or_path else base_model_of(start_from)
    processor = str(start_from) if (start_from / PROCESSOR).is_file() else (base or str(start_from))
    if kind == "full":
        return VLASources(str(start_from), processor, action_tokenizer=start_from, trained=True, revision=revision)
    if not base:
        raise CheckpointError(f"{start_from} is an adapter but its base model is unknown: set model.name_or_path")
    return VLASources(base, processor, adapter=start_from, action_tokenizer=start_from, trained=True, revision=revision)


def preflight_vla(cfg: TrainConfig, start_from: Path | None = None):
    """Every check of the VLA of ``cfg`` that needs no weights (vla_loading.preflight), on its sources."""
    from ..policies.vla_loading import preflight

    return preflight(cfg.model, cfg.env.action_dims, cfg.env.num_bins, vla_sources(cfg, start_from),
                     parallel=cfg.action.decoding == "parallel")


def build_vla_policy(cfg: TrainConfig, start_from: Path | None = None, *,
                     bounds: tuple[list[float], list[float]] | None = None) -> nn.Module:
    """The VLA policy of ``cfg`` (preflight, then weights). ``bounds``: action normalisation bounds to
    use instead of the tokenizer's (SFT from a dataset's q01 / q99)."""
    from ..policies.vla_loading import load_vla_policy

    files = preflight_vla(cfg, start_from)
    return load_vla_policy(cfg.model, cfg.env.action_dims, cfg.env.num_bins, files, bounds=bounds,
                           chunk_size=cfg.action.chunk_size, decoding=cfg.action.decoding)


# -- agents -----------------------------------------------------------------------------------------
def _obs_dim_of(checkpoint: Path) -> int:
    """The observation width an MLP policy was trained on (its first layer's input width)."""
    from safetensors import safe_open

    path = checkpoint / POLICY_WEIGHTS
    try:
        with safe_open(str(path), "pt") as f:
            return int(f.get_slice(FIRST_LAYER).get_shape()[1])
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable policy file ({type(err).__name__}: {err})") from None


def build_agent(cfg: TrainConfig, *, obs_dim: int | None = None, start_from: Path | None = None) -> Agent:
    """The agent ``cfg`` describes; with ``start_from`` (a resolved checkpoint dir), its policy weights and
    every head file it holds (an SFT checkpoint has none: those heads start fresh). ``obs_dim``: the
    env's observation width for an MLP policy (read from the checkpoint when starting from one)."""
    if cfg.policy.type == "vla":
        policy = build_vla_policy(cfg, start_from)
    else:
        if start_from is not None:
            verify(start_from)
            if checkpoint_kind(start_from) != "state":
                raise CheckpointError(f"{start_from} holds no {POLICY_WEIGHTS}: it is not a checkpoint of a "
                                      f"policy.type={cfg.policy.type} policy")
            width = _obs_dim_of(start_from)
            if obs_dim is not None and width != obs_dim:
                raise CheckpointError(f"{start_from} was trained on {width}-wide observations but this env gives "
                                      f"{obs_dim}: use the env it was trained on (env.id, env.task, env.action_dims)")
            obs_dim = width
        if obs_dim is None:
            raise ValueError("build_agent needs obs_dim for a state policy")
        policy = build_state_policy(cfg, obs_dim)
        if start_from is not None:
            _load(policy, start_from / POLICY_WEIGHTS, cfg, start_from)
    agent = Agent.from_config(cfg, policy)
    if start_from is not None:
        for attr, module in agent.heads().items():
            path = start_from / HEAD_FILES[attr]
            if path.is_file():
                _load(module, path, cfg, start_from)
        if (start_from / ENV_NORMALIZATION).is_file():
            agent.env_normalization = check_json(start_from / ENV_NORMALIZATION)
    return agent


def _load(module: nn.Module, path: Path, cfg: TrainConfig, checkpoint: Path) -> None:
    """Strict loading; on a shape mismatch, name the config fields that differ from the checkpoint's."""
    try:
        load_module(module, path)
    except CheckpointError as err:
        changed = _shape_fields_changed(cfg, checkpoint)
        if changed:
            raise CheckpointError(f"{path} does not fit this run: {', '.join(changed)} differ from the checkpoint's "
                                  f"config; use the checkpoint's values") from None
        raise err from None


# fields that change the shapes of the policy or heads
_SHAPE_FIELDS = ("env.action_dims", "env.num_bins", "action.chunk_size", "policy.type", "policy.hidden_size",
                 "policy.num_layers", "policy.value_hidden_size", "head.hidden_size", "head.bin_embed_dim", "head.rank",
                 "head.pairwise")


def _shape_fields_changed(cfg: TrainConfig, checkpoint: Path) -> list[str]:
    try:
        saved = read_config(checkpoint)
    except CheckpointError:
        return []
    out = []
    for key in _SHAPE_FIELDS:
        section, name = key.split(".")
        mine, theirs = getattr(getattr(cfg, section), name), getattr(getattr(saved, section), name)
        if mine != theirs:
            out.append(f"{key}={mine!r} (checkpoint: {theirs!r})")
    return out


def load_agent(checkpoint: str | Path, overrides: Sequence[str] = (), *, device: str | None = None
               ) -> tuple[Agent, TrainConfig]:
    """The agent of a checkpoint (a checkpoint dir, a run dir or ``hf://…``) in eval mode, and its config
    with ``overrides`` (``key=value``) applied. Building draws no numbers from the caller's RNG streams."""
    where = resolve(checkpoint)
    cfg = apply_overrides(read_config(where), list(overrides), str(where / CONFIG))
    cfg = dataclasses.replace(cfg, resume=None)
    with _rng_untouched():  # building modules draws initial weights (then overwritten)
        agent = build_agent(cfg, start_from=where)
    agent.to(_device(device or cfg.device))
    agent.eval()
    return agent, cfg


def load_pretrained_agent(cfg: TrainConfig, model: str, *, device: str | None = None
                          ) -> tuple[Agent, TrainConfig]:
    """A pretrained VLA ``model`` (local dir or Hub id) as an agent in eval mode, built with ``cfg``'s policy
    and model settings (``model.unnorm_key``, ``model.dtype`` …) and fresh heads, and that config. Greedy and
    sampled actions come from the model alone, so evaluating it measures the released checkpoint."""
    from ..config import ConfigError

    if cfg.policy.type != "vla":
        raise ConfigError(f"{model!r} is a pretrained model, which needs policy.type=vla (the recipe has "
                          f"{cfg.policy.type!r}); a state policy is evaluated from a checkpoint of this toolkit")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name_or_path=model, tiny_arch=None),
                              init_from=None, resume=None)
    with _rng_untouched():
        agent = build_agent(cfg)
    agent.to(_device(device or cfg.device))
    agent.eval()
    return agent, cfg


def _device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


class _rng_untouched:
    def __enter__(self) -> None:
        self.state = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def __exit__(self, *exc: Any) -> None:
        torch.set_rng_state(self.state)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


# -- saving ---------------------------------------------------------------------------------------------
def save_agent(agent: Agent | nn.Module, directory: Path, cfg: TrainConfig) -> None:
    """Policy (a VLA: adapter or model + processor + action tokenizer; an MLP: ``policy.safetensors``),
    the heads that exist and ``config.yaml`` into ``directory``. An SFT run saves a bare policy."""
    policy = agent.policy if isinstance(agent, Agent) else agent
    if hasattr(policy, "save_pretrained"):
        policy.save_pretrained(directory)
        _write_readme(directory, cfg)
    else:
        save_module(policy, directory / POLICY_WEIGHTS)
    if isinstance(agent, Agent):
        for attr, module in agent.heads().items():
            save_module(module, directory / HEAD_FILES[attr])
        if agent.env_normalization is not None:
            (directory / ENV_NORMALIZATION).write_text(json.dumps(agent.env_normalization, indent=1))
    (directory / CONFIG).write_text(to_yaml(cfg))


def _write_readme(directory: Path, cfg: TrainConfig) -> None:
    """peft writes a boilerplate model card ("More Information Needed") into every adapter dir: replace it
    with what the checkpoint is (``vla-structppo push`` generates the full card with the results)."""
    base = cfg.model.name_or_path or (f"the base model of init_from={cfg.init_from}" if cfg.init_from else "?")
    (directory / README).write_text(
        f"# vla-structppo checkpoint: {cfg.name}\n\n"
        f"A {'LoRA adapter' if cfg.model.lora.enabled else 'fully fine-tuned model'} of `{base}` for "
        f"{cfg.env.action_dims} action tokens x {cfg.env.num_bins} bins on `{cfg.env.id}`"
        f"{f' `{cfg.env.task}`' if cfg.env.task else ''}. `config.yaml` is the resolved recipe; "
        "`vla-structppo eval eval.checkpoint=THIS_DIR` evaluates it, `init_from=THIS_DIR` trains from it and "
        "`vla-structppo push` shares it with a full model card.\n")
