"""Evaluate a checkpoint on fixed seeds: success rate with a 95% Wilson interval, episode lengths and
returns per task, MP4 videos, side by side with a second checkpoint or the scripted expert.

Protocol (docs/evaluation.md): the env is reset with ``seed`` (env i gets ``seed + i``), torch / numpy /
python are seeded with ``seed`` for sampled actions, and each task's ``num_episodes`` episodes are fixed
*slots* (episodes.py), so the counted episodes do not depend on which envs finish first. The same checkpoint
and seeds give identical results; the global RNG streams are restored afterwards, so an evaluation during
training leaves training bit-identical.

stats.py: the Wilson interval; episodes.py: the loop; video.py: MP4s; report.py: the ``eval`` verb, the
results files and the trainer's periodic evaluation.
"""

from .episodes import evaluate_policy, preserve_rng
from .report import evaluate_during_training, results_markdown, run_eval
from .stats import wilson_interval

__all__ = ["evaluate_during_training", "evaluate_policy", "preserve_rng", "results_markdown", "run_eval",
           "wilson_interval"]
