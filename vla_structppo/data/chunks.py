"""Action-chunk targets from per-step demonstrations (``action.chunk_size: H``): the SFT target of step t is the
next H actions of its episode, ``actions[t .. t + H - 1]``.

Near an episode's end the chunk runs past the last action. ``sft.chunk_tail`` says what then happens:

* ``repeat`` (default): the missing actions repeat the episode's last one -- OpenVLA-OFT's chunker clamps the
  future indices to the last step (``tf.minimum(..., goal_timestep)`` in ``chunk_act_obs``), so this is what a
  sample near the end gets there when it is kept;
* ``drop``: the last H - 1 steps of every episode give no sample, as OFT's released pipeline does
  (``effective_traj_len = traj_len - future_action_window_size``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["CHUNK_TAILS", "chunk_targets"]

CHUNK_TAILS = ("repeat", "drop")


def chunk_targets(actions: np.ndarray, episode_index: np.ndarray, chunk_size: int, tail: str = "repeat"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(targets [M, H, A], rows [M])``: each kept step's chunk of the next H actions of its episode, and which
    rows (steps) of the dataset they belong to. Rows must be grouped by episode in time order (the demo format)."""
    if tail not in CHUNK_TAILS:
        raise ValueError(f"chunk tail must be one of {CHUNK_TAILS}, got {tail!r}")
    actions = np.asarray(actions)
    episodes = np.asarray(episode_index)
    n = len(actions)
    if n == 0:
        return actions.reshape(0, chunk_size, actions.shape[-1] if actions.ndim == 2 else 0), np.zeros(0, np.int64)
    starts = np.r_[0, np.flatnonzero(episodes[1:] != episodes[:-1]) + 1]
    ends = np.r_[starts[1:], n]  # exclusive
    last = np.repeat(ends - 1, ends - starts)  # [n] each row's episode's last row
    index = np.arange(n)[:, None] + np.arange(chunk_size)[None, :]  # [n, H]
    targets = actions[np.minimum(index, last[:, None])]  # [n, H, A]: past the end -> the last action
    if tail == "repeat":
        return targets, np.arange(n)
    keep = index[:, -1] <= last
    return targets[keep], np.flatnonzero(keep)
