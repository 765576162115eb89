"""Continuous actions <-> per-dim bins <-> vocabulary token ids (RT-2 / OpenVLA style).

Each action dim ``i`` has bounds ``[low_i, high_i]`` (the q01 / q99 of a demonstration dataset, as
OpenVLA does, or an environment's action bounds); its K bins are the points of the bin grid
(vla_structppo/bins.py: K evenly spaced points spanning the bounds, both ends included) — the same
grid every env decodes its bins on.

Bin ``k`` of every dim is the same vocabulary token ``token_ids[k]``: the last K ids of the vocabulary
(``last_k``; nothing to resize), K added ``<act_k>`` tokens (``add``), or OpenVLA's own coding
(``openvla``: the last 256 of its 32000 ids, reversed, over 255 bin centres with q01 / q99 + mask
un-normalisation — vla_structppo.bins.OpenVLABins), exact in both directions.
The tokenizer is saved to / loaded from JSON strictly: unknown or missing keys, wrong lengths, bins
that are not distinct or out of range all fail with the file named.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..bins import BinCoding, BinGrid, OpenVLABins
from ..errors import UserError

__all__ = ["ACTION_TOKEN_MODES", "ActionTokenizer", "ActionTokenizerError", "FILE_NAME"]

FILE_NAME = "action_tokenizer.json"
ACTION_TOKEN_MODES = ("last_k", "add", "openvla")
_FORMAT_VERSION = 1


class ActionTokenizerError(UserError, ValueError):
    """A tokenizer that cannot hold the bins, or an action tokenizer file that is malformed."""


@dataclass
class ActionTokenizer:
    """``D`` dims x ``K`` bins, bin ``k`` <-> vocabulary id ``token_ids[k]``, per-dim bounds ``low/high``."""

    action_dims: int
    num_bins: int
    token_ids: list[int]
    low: list[float]
    high: list[float]
    mode: str = "last_k"
    token_strings: list[str] | None = None  # the ``<act_k>`` strings in "add" mode
    mask: list[bool] | None = None  # openvla: the dims that are normalised (the gripper is not)
    fixed: list[bool] | None = None  # openvla: dims whose statistics have min == max (normalised to 0)
    unnorm_key: str | None = None  # openvla: the dataset statistics the bounds come from
    unnorm_eps: float | None = None  # openvla: OpenVLA-OFT un-normalises with (high - low + 1e-8)

    def __post_init__(self) -> None:
        D, K = self.action_dims, self.num_bins
        problems = []
        if D < 1 or K < 2:
            problems.append(f"need action_dims >= 1 and num_bins >= 2, got {D} and {K}")
        if self.mode not in ACTION_TOKEN_MODES:
            problems.append(f"mode {self.mode!r} is not one of {list(ACTION_TOKEN_MODES)}")
        if len(self.token_ids) != K:
            problems.append(f"{len(self.token_ids)} token ids for {K} bins")
        elif len(set(self.token_ids)) != K or min(self.token_ids) < 0:
            problems.append("token ids must be K distinct non-negative ids")
        if len(self.low) != D or len(self.high) != D:
            problems.append(f"bounds have {len(self.low)} / {len(self.high)} entries for {D} dims")
        elif any(not (math.isfinite(lo) and math.isfinite(hi) and (hi > lo or (self.mode == "openvla" and hi >= lo)))
                 for lo, hi in zip(self.low, self.high)):
            problems.append("every dim needs finite bounds with high > low")
        if self.unnorm_eps is not None and (self.mode != "openvla" or not 0 <= self.unnorm_eps < 1e-3):
            problems.append(f"unnorm_eps is for mode 'openvla', a small number >= 0, got {self.unnorm_eps!r}")
        for name in ("mask", "fixed"):
            value = getattr(self, name)
            if value is not None and (self.mode != "openvla" or len(value) != D):
                problems.append(f"{name} is for mode 'openvla', with one entry per dim")
        if problems:
            raise ActionTokenizerError("invalid action tokenizer: " + "; ".join(problems))
        self.token_ids = [int(t) for t in self.token_ids]
        self.low = [float(x) for x in self.low]
        self.high = [float(x) for x in self.high]

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def last_k(cls, vocab_size: int, action_dims: int, num_bins: int, low: Sequence[float], high: Sequence[float],
               *, reserved_ids: Sequence[int] = ()) -> ActionTokenizer:
        """Reuse the last ``num_bins`` ids of a ``vocab_size`` vocabulary (OpenVLA's choice).

        ``reserved_ids`` (pad, bos, eos, image tokens ...) must not be among them: a bin that is also
        the image token would corrupt every prompt.
        """
        if vocab_size < num_bins + 1:
            raise ActionTokenizerError(
                f"the vocabulary has {vocab_size} tokens and cannot hold {num_bins} action bins plus the "
                "prompt's tokens; use model.action_tokens=add (adds <act_k> tokens and resizes the embeddings) "
                "or fewer bins")
        ids = list(range(vocab_size - num_bins, vocab_size))
        clash = sorted(set(ids) & {int(r) for r in reserved_ids})
        if clash:
            raise ActionTokenizerError(
                f"the last {num_bins} vocabulary ids include special tokens {clash[:8]} (pad / bos / eos / image "
                "tokens), so they cannot be reused as action bins; use model.action_tokens=add")
        return cls(action_dims, num_bins, ids, list(low), list(high), mode="last_k")

    @classmethod
    def added(cls, token_ids: Sequence[int], token_strings: Sequence[str], action_dims: int,
              low: Sequence[float], high: Sequence[float]) -> ActionTokenizer:
        return cls(action_dims, len(token_ids), list(token_ids), list(low), list(high), mode="add",
                   token_strings=list(token_strings))

    @staticmethod
    def added_token_strings(num_bins: int) -> list[str]:
        return [f"<act_{k}>" for k in range(num_bins)]

    @classmethod
    def openvla(cls, norm_stats: dict, unnorm_key: str | None, *, vocab_size: int = 32000,
                num_bins: int = 256, oft: bool = False) -> ActionTokenizer:
        """OpenVLA's own coding of a checkpoint's ``norm_stats`` (config.json): bin ``k`` is token
        ``vocab_size - 1 - k`` (the last 256 ids, reversed), bounds ``q01`` / ``q99`` of
        ``norm_stats[unnorm_key]["action"]`` with its ``mask`` (vla_structppo.bins.OpenVLABins). ``oft``: OpenVLA-OFT's
        un-normalisation (``+ 1e-8`` on the range)."""
        if not norm_stats:
            raise ActionTokenizerError("the checkpoint's config.json has no norm_stats to un-normalise actions with")
        if unnorm_key is None:
            if len(norm_stats) != 1:
                raise ActionTokenizerError(f"the checkpoint has action statistics of several datasets: set "
                                           f"model.unnorm_key to one of {sorted(norm_stats)}")
            unnorm_key = next(iter(norm_stats))
        if unnorm_key not in norm_stats and f"{unnorm_key}_no_noops" in norm_stats:
            unnorm_key = f"{unnorm_key}_no_noops"  # as OpenVLA's LIBERO evaluation looks the suite up
        if unnorm_key not in norm_stats:
            raise ActionTokenizerError(f"model.unnorm_key={unnorm_key!r} is not in the checkpoint's norm_stats; "
                                       f"available: {sorted(norm_stats)}")
        stats = norm_stats[unnorm_key]["action"]
        D = len(stats["q01"])
        mask = [bool(m) for m in stats.get("mask", [True] * D)]
        fixed = [lo == hi for lo, hi in zip(stats.get("min", [0.0] * D), stats.get("max", [1.0] * D))]
        ids = [vocab_size - 1 - k for k in range(num_bins)]
        return cls(D, num_bins, ids, list(stats["q01"]), list(stats["q99"]), mode="openvla", mask=mask, fixed=fixed,
                   unnorm_key=unnorm_key, unnorm_eps=1e-8 if oft else None)

    # -- mapping (vla_structppo/bins.py: the bin grid every env shares, or OpenVLA's coding) ----------------
    @property
    def coding(self) -> BinCoding:
        """The bin <-> continuous mapping of these tokens (what an env decodes a policy's bins with)."""
        if self.mode == "openvla":
            return OpenVLABins(self.low, self.high, self.mask, self.fixed, self.num_bins, self.unnorm_eps or 0.0)
        return BinGrid(self.low, self.high, self.num_bins)

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Continuous ``actions [..., D]`` -> bins ``[..., D]`` (int64); out-of-bounds values clip."""
        a = np.asarray(actions, np.float64)
        if a.shape[-1] != self.action_dims:
            raise ActionTokenizerError(f"actions have {a.shape[-1]} dims, the action tokenizer {self.action_dims}")
        return self.coding.encode(a)

    def decode(self, bins: np.ndarray) -> np.ndarray:
        """Bins ``[..., D]`` -> continuous actions ``[..., D]`` (the bin values, un-normalised)."""
        try:
            return self.coding.decode(bins)
        except ValueError as err:
            raise ActionTokenizerError(str(err)) from None

    def bins_to_tokens(self, bins):
        """Bins -> token ids (numpy or torch, any shape)."""
        table = self._table(bins)
        return table[bins]

    def tokens_to_bins(self, token_ids):
        """Token ids -> bins; an id that is no bin token raises (the policy never emits one)."""
        import torch

        ids = torch.as_tensor(token_ids)
        lookup = torch.full((max(self.token_ids) + 1,), -1, dtype=torch.long)
        lookup[torch.tensor(self.token_ids)] = torch.arange(self.num_bins)
        ok = (ids >= 0) & (ids < len(lookup))
        bins = torch.where(ok, lookup[ids.clamp(0, len(lookup) - 1)], torch.full_like(ids, -1))
        if (bins < 0).any():
            bad = ids[bins < 0][:5].tolist()
            raise ActionTokenizerError(f"token ids {bad} are not action-bin tokens")
        return bins if isinstance(token_ids, torch.Tensor) else bins.numpy()

    def _table(self, like):
        import torch

        if isinstance(like, torch.Tensor):
            return torch.tensor(self.token_ids, dtype=torch.long, device=like.device)
        return np.asarray(self.token_ids, dtype=np.int64)

    # -- persistence ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format_version": _FORMAT_VERSION, **asdict(self)}

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / FILE_NAME
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ActionTokenizer:
        """From a checkpoint dir or the JSON file itself; strict about keys and values."""
        p = Path(path)
        if p.is_dir():
            p = p / FILE_NAME
        if not p.is_file():
            raise ActionTokenizerError(
                f"no action tokenizer at {p}; a VLA checkpoint holds {FILE_NAME} (write one with "
                "scripts/make_tiny_vla.py, `vla-structppo sft`, or ActionTokenizer.save)")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as err:
            raise ActionTokenizerError(f"{p}: not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise ActionTokenizerError(f"{p}: expected a JSON object")
        optional = {"token_strings", "mask", "fixed", "unnorm_key", "unnorm_eps"}
        expected = {"format_version", "action_dims", "num_bins", "token_ids", "low", "high", "mode", *optional}
        unknown, missing = set(data) - expected, expected - set(data) - optional
        if unknown or missing:
            raise ActionTokenizerError(f"{p}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        if data["format_version"] != _FORMAT_VERSION:
            raise ActionTokenizerError(f"{p}: format_version {data['format_version']} (this version reads "
                                       f"{_FORMAT_VERSION})")
        for key, typ in (("action_dims", int), ("num_bins", int), ("mode", str)):
            if not isinstance(data[key], typ) or isinstance(data[key], bool):
                raise ActionTokenizerError(f"{p}: {key} must be {typ.__name__}, got {data[key]!r}")
        for key in ("token_ids", "low", "high"):
            if not isinstance(data[key], list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                          for v in data[key]):
                raise ActionTokenizerError(f"{p}: {key} must be a list of numbers")
        if any(not isinstance(t, int) for t in data["token_ids"]):
            raise ActionTokenizerError(f"{p}: token_ids must be integers")
        data.pop("format_version")
        try:
            return cls(**data)
        except ActionTokenizerError as err:
            raise ActionTokenizerError(f"{p}: {err}") from None
