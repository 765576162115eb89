"""The run: ``TrainConfig`` -- the run's own fields, one field per section, the derived sizes and ``validate`` --
and ``logging``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, List, Optional  # noqa: UP035 - OmegaConf reads typing generics

from .choices import DEVICES, TRACKERS, ConfigError, at_least
from .choices import not_one_of as _not_one_of
from .data import DemosConfig, EvalConfig, SFTConfig
from .env import EnvConfig
from .model import ModelConfig, PolicyConfig
from .training import ActionConfig, AdvantageConfig, CreditConfig, HeadConfig, PPOConfig, RolloutConfig

__all__ = ["LoggingConfig", "TrainConfig"]


@dataclass
class LoggingConfig:
    log_every: int = 1
    """Write scalars every this many updates."""
    plot_every: int = 10
    """Write the per-dim bar chart and pairwise heatmap every this many updates (0 = never)."""
    checkpoint_every: int = 10
    """Checkpoint every this many updates (0 = only at the end)."""
    keep_checkpoints: int = 2
    """Newest checkpoints to keep (older ones are deleted)."""
    progress_bar: bool = True
    """Show a progress bar (main process only)."""
    report_to: List[str] = field(default_factory=lambda: ["tensorboard"])  # noqa: UP006
    """Trackers (TRL's name), through Accelerate: any of ``tensorboard`` (``<run>/tb``), ``wandb``, ``trackio``,
    ``mlflow``; ``[all]`` = every installed one, ``[none]`` = none. Each gets the scalars, the resolved config as
    hyper-parameters and the credit plots."""
    project: str = "vla-structppo"
    """Project (W&B / trackio project, MLflow experiment) the runs are logged under."""
    offline: bool = False
    """Trackers write only to disk: W&B offline mode under ``<run>/wandb`` (``wandb sync`` later), MLflow to
    ``<run>/mlruns``; trackio and TensorBoard are local anyway."""
    tensorboard: Optional[bool] = None  # noqa: UP045
    """Older spelling: ``false`` drops ``tensorboard`` from ``report_to``, ``true`` adds it."""

    def problems(self, cfg: TrainConfig) -> list[str]:
        report = list(self.report_to)
        out = []
        if any(n in ("all", "none") for n in report) and len(report) > 1:
            out.append(f"logging.report_to: 'all' and 'none' stand alone, got {report}")
        out += [_not_one_of("logging.report_to entry", name, (*TRACKERS, "all", "none")) for name in report
                if name not in (*TRACKERS, "all", "none")]
        return out + at_least([("logging.log_every", self.log_every, 1), ("logging.plot_every", self.plot_every, 0),
                               ("logging.checkpoint_every", self.checkpoint_every, 0),
                               ("logging.keep_checkpoints", self.keep_checkpoints, 0)])


@dataclass
class TrainConfig:
    name: str = "run"
    """Run name: the run directory is ``<output_dir>/<name>``."""
    output_dir: str = "runs"
    """Where run directories go."""
    seed: int = 1
    """Seed of everything (model init, envs, sampling)."""
    device: str = "auto"
    """``auto`` (CUDA if available), ``cpu`` or ``cuda``."""
    resume: Optional[str] = None  # noqa: UP045
    """A run dir (its newest checkpoint) or a checkpoint dir to continue exactly from."""
    init_from: Optional[str] = None  # noqa: UP045
    """Start weights (adapter, and heads when present) from this checkpoint, e.g. an SFT run's."""
    overwrite: bool = False
    """Replace an existing run of the same name (deleted once the new run has loaded its model and starts);
    without it a name in use is refused, and ``resume=`` is the way to continue a run."""
    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    demos: DemosConfig = field(default_factory=DemosConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    credit: CreditConfig = field(default_factory=CreditConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    action: ActionConfig = field(default_factory=ActionConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)

    # -- derived ----------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.env.num_envs * self.ppo.num_steps

    @property
    def num_updates(self) -> int:
        return max(1, self.ppo.total_timesteps // self.env_steps_per_update)

    @property
    def needs_critic(self) -> bool:
        """Whether the advantage estimator uses a value head (GAE does, GRPO does not)."""
        return self.advantage.estimator == "gae"

    @property
    def max_decisions(self) -> int:
        """Decisions an episode can take: its step limit over the chunk size (rounded up)."""
        return -(-self.env.episode_limit // self.action.chunk_size)

    @property
    def env_steps_per_update(self) -> int:
        """Env steps an update collects at most: ``num_envs x num_steps x chunk_size`` (GAE) or every env's episode
        at its longest (GRPO)."""
        if self.advantage.estimator == "grpo":
            return self.env.num_envs * self.max_decisions * self.action.chunk_size
        return self.batch_size * self.action.chunk_size

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def validate(self) -> TrainConfig:
        """Check every combination that cannot run; raise one :class:`ConfigError` listing them all.

        Each section (every dataclass field, in field order) checks its own fields and the combinations it takes
        part in (``problems``); what is left here are the run's own fields."""
        problems: list[str] = []
        for f in fields(self):
            section = getattr(self, f.name)
            if isinstance(section, EnvConfig):  # checked on its own too (merge_settings: an evaluation's env)
                problems.extend(section.problems())
            elif is_dataclass(section):
                problems.extend(section.problems(self))
        if self.device not in DEVICES:
            problems.append(_not_one_of("device", self.device, DEVICES))
        problems.extend(at_least([("seed", self.seed, 0)]))
        problems.extend(_non_finite(self))
        problems.extend(_bad_name(self.name))
        if problems:
            raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
        return self


def _non_finite(cfg: Any, prefix: str = "") -> list[str]:
    """Every float field must be a finite number (nan / inf pass a ``<= 0`` check and fail much later)."""
    out = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            out += _non_finite(value, f"{prefix}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            out.append(f"{prefix}{f.name} must be a finite number, got {value}")
    return out


def _bad_name(name: str) -> list[str]:
    """A run name is one directory under ``output_dir``: no separators, no ``..``."""
    if not name or name.strip() != name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        return [f"name={name!r} must be a plain directory name (letters, digits, - _ .; no '/', not starting with "
                "'.'): the run dir is output_dir/name"]
    return []
