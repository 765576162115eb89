"""``sft`` (behaviour cloning), ``demos`` (recording them) and ``eval`` (fixed-seed evaluation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional  # noqa: UP035 - OmegaConf reads typing generics

from .choices import CHUNK_TAILS, at_least
from .choices import not_one_of as _not_one_of

__all__ = ["DemosConfig", "EvalConfig", "SFTConfig"]


@dataclass
class SFTConfig:
    dataset: Optional[str] = None  # noqa: UP045
    """Demonstrations: a dir written by ``vla-structppo demos`` / ``convert`` (``image``, ``instruction``, ``action``),
    a LeRobot dataset dir (codebase v3.0 or v2.1) or a LeRobot dataset's Hub id (docs/data.md)."""
    image_key: Optional[str] = None  # noqa: UP045
    """LeRobot datasets: the camera feature to clone from (null = the first camera in meta/info.json)."""
    action_key: str = "action"
    """LeRobot datasets: the action feature."""
    dataset_revision: Optional[str] = None  # noqa: UP045
    """LeRobot datasets on the Hub: branch, tag or commit."""
    num_epochs: int = 20
    """Passes over the dataset."""
    batch_size: int = 16
    """Samples per optimizer step."""
    learning_rate: float = 1.0e-3
    """AdamW learning rate of the adapter (or the model under full fine-tuning)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_samples: int = 0
    """Use only the first n samples (0 = all)."""
    bounds: str = "dataset"
    """Action normalisation bounds: ``dataset`` (q01/q99 of its actions) or ``model`` (the checkpoint's)."""
    preprocess: str = "auto"
    """``upfront``: every sample through the processor once, kept in memory (fast epochs); ``per_batch``: each
    minibatch processed when it is drawn (memory holds one batch: datasets larger than memory); ``auto``:
    upfront up to 20,000 samples."""
    chunk_tail: str = "repeat"
    """Action chunks (``action.chunk_size > 1``): a step's target is the next H actions of its episode; near the
    end ``repeat`` fills the chunk with the episode's last action (OpenVLA-OFT's clamped chunk indices), ``drop``
    gives the last H - 1 steps no sample (OFT's released data pipeline) (data/chunks.py)."""

    def problems(self, cfg: Any) -> list[str]:  # cfg: the run.TrainConfig
        out = [_not_one_of(key, value, options) for key, value, options in (
            ("sft.bounds", self.bounds, ("dataset", "model")),
            ("sft.preprocess", self.preprocess, ("auto", "upfront", "per_batch")),
            ("sft.chunk_tail", self.chunk_tail, CHUNK_TAILS)) if value not in options]
        out += at_least([("sft.num_epochs", self.num_epochs, 1), ("sft.batch_size", self.batch_size, 1),
                         ("sft.max_samples", self.max_samples, 0)])
        if self.learning_rate <= 0:
            out.append(f"sft.learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            out.append(f"sft.weight_decay must be >= 0, got {self.weight_decay}")
        return out


@dataclass
class DemosConfig:
    num_episodes: int = 50
    """Expert episodes to record per task (simulators); the structured task records ``sft.max_samples`` steps."""
    keep_failed: bool = False
    """Keep episodes the expert failed (default: only successful ones)."""
    seed: int = 100_000
    """First episode seed of the demonstrations (disjoint from training and evaluation seeds)."""
    format: str = "datasets"
    """What ``demos`` writes at ``sft.dataset``: ``datasets`` (this project's format) or ``lerobot`` (a LeRobot
    v3.0 dataset that LeRobot's tools read; SFT reads both)."""
    fps: float = 10.0
    """``format: lerobot``: the frame rate recorded in meta/info.json (timestamps are frame_index / fps)."""

    def problems(self, cfg: Any) -> list[str]:  # cfg: the run.TrainConfig
        out = [] if self.format in ("datasets", "lerobot") else [
            _not_one_of("demos.format", self.format, ("datasets", "lerobot"))]
        if not self.fps > 0:
            out.append(f"demos.fps must be > 0, got {self.fps}")
        return out + at_least([("demos.num_episodes", self.num_episodes, 1)])


@dataclass
class EvalConfig:
    checkpoint: Optional[str] = None  # noqa: UP045
    """Checkpoint (or run dir, or ``hf://org/name[@rev]``) to evaluate."""
    num_episodes: int = 20
    """Episodes per task."""
    seed: int = 1_000_000
    """First episode seed (fixed: the same checkpoint and seeds give identical results)."""
    num_envs: int = 4
    """Parallel envs of the evaluation."""
    deterministic: bool = True
    """Greedy actions (true) or sampled at ``temperature`` (false)."""
    temperature: float = 1.0
    """Sampling temperature when ``deterministic`` is false."""
    videos: int = 2
    """Record this many episodes per task as MP4 (0 = none)."""
    compare: Optional[str] = None  # noqa: UP045
    """A second checkpoint evaluated on the same seeds, side by side."""
    expert: bool = False
    """Also evaluate the scripted expert on the same seeds."""
    every: int = 0
    """During training, evaluate every this many updates (0 = never)."""

    def problems(self, cfg: Any) -> list[str]:  # cfg: the run.TrainConfig
        out = at_least([("eval.num_episodes", self.num_episodes, 1), ("eval.num_envs", self.num_envs, 1),
                        ("eval.videos", self.videos, 0), ("eval.every", self.every, 0)])
        if self.temperature <= 0:
            out.append("eval.temperature must be > 0")
        return out
