"""OpenVLA's processor, native: the image transform and the prompt, as the original applies them.

* **Image** (``PrismaticImageProcessor`` with ``resize-naive``): RGB, resized straight to 224 x 224 with PIL's
  bicubic filter (antialiased; non-square images are stretched), scaled to [0, 1], then normalised twice
  — DINO's ImageNet statistics as saved in ``preprocessor_config.json`` (bf16-rounded in the releases:
  ``tvf_normalize_params`` are what the original applies) for channels 0-2, SigLIP's 0.5 / 0.5 for 3-5 —
  giving ``pixel_values [B, 6, 224, 224]`` float32. PIL, not torchvision: the original hands PIL images to
  torchvision, which resizes them with PIL; torchvision's tensor path differs by up to 7/255.
* **Prompt**: the policy writes ``In: What action should the robot take to {instruction}?\\nOut:`` with the
  instruction lower-cased; the Llama tokenizer (``LlamaTokenizerFast``) adds BOS; if the last id is not 29871
  (``▁``) it is appended, as ``predict_action`` does; and one image placeholder per patch (256 at 224 px)
  follows BOS (modeling.py).
  Batches are left-padded with ``<PAD>`` (attention mask 0).
* **OpenVLA-OFT's official layout** (``num_images``, ``use_proprio``): each sample's V pictures (third-person
  first, then the wrist camera) are transformed alike and stacked on channels, ``[B, 6 V, 224, 224]``, with
  V x 256 image placeholders; the robot state is normalised like OFT's ``normalize_proprio`` (mask, then
  ``2 (x - q01) / (q99 - q01 + 1e-8) - 1`` clipped to [-1, 1]) into ``proprio [B, P]``, and one proprio
  placeholder follows the image placeholders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...files import check_json
from .modeling import IMAGE_TOKEN_ID, PROPRIO_TOKEN_ID

__all__ = ["OpenVLAImageProcessor", "OpenVLAProcessor"]

PREPROCESSOR_CONFIG = "preprocessor_config.json"
PROCESSOR_CONFIG = "processor_config.json"
SPACE_TOKEN_ID = 29871  # "▁": the original appends it when the prompt does not end with it
PATCH = 14  # OpenVLA's ViTs cut 14 x 14 patches: 224 px -> 256 patches per image


class OpenVLAImageProcessor:
    """PIL bicubic resize to ``size`` and two normalisations (module doc)."""

    def __init__(self, size: tuple[int, int] = (224, 224), means: list[list[float]] | None = None,
                 stds: list[list[float]] | None = None, config: dict | None = None) -> None:
        self.size = tuple(size)
        self.means = np.asarray(means or [[0.484375, 0.455078125, 0.40625], [0.5, 0.5, 0.5]], np.float32)
        self.stds = np.asarray(stds or [[0.228515625, 0.2236328125, 0.224609375], [0.5, 0.5, 0.5]], np.float32)
        self.config = config or {}

    @classmethod
    def from_config(cls, data: dict) -> OpenVLAImageProcessor:
        if data.get("image_resize_strategy", "resize-naive") != "resize-naive":
            raise ValueError(f"image_resize_strategy {data['image_resize_strategy']!r}: the port implements "
                             "OpenVLA's resize-naive")
        params = data.get("tvf_normalize_params")  # what the original applies (the saved, rounded values)
        means = [p["mean"] for p in params] if params else data.get("means")
        stds = [p["std"] for p in params] if params else data.get("stds")
        resize = data.get("tvf_resize_params")
        size = tuple(resize[0]["size"]) if resize else tuple(data.get("input_sizes", [[3, 224, 224]])[0][1:])
        return cls(size, means, stds, data)

    def __call__(self, images: list[Any]) -> torch.Tensor:
        from PIL import Image

        out = []
        for img in images:
            img = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img, np.uint8))
            img = img.convert("RGB")
            if img.size != self.size[::-1]:
                img = img.resize(self.size[::-1], Image.BICUBIC)
            x = np.asarray(img, np.float32) / np.float32(255.0)  # [H, W, 3]
            out.append(np.concatenate([((x - m) / s).transpose(2, 0, 1) for m, s in zip(self.means, self.stds)]))
        return torch.from_numpy(np.stack(out))  # [B, 6, H, W]

    def to_dict(self) -> dict:
        data = dict(self.config)
        data.pop("auto_map", None)
        data.update(image_processor_type="OpenVLAImageProcessor", image_resize_strategy="resize-naive",
                    tvf_normalize_params=[{"mean": m.tolist(), "std": s.tolist(), "inplace": False}
                                          for m, s in zip(self.means, self.stds)],
                    tvf_resize_params=[{"size": list(self.size), "interpolation": 3, "antialias": True,
                                        "max_size": None}] * 2)
        return data


class OpenVLAProcessor:
    """``processor(images=, text=, return_tensors="pt", padding=True)`` -> ``input_ids``, ``attention_mask``,
    ``pixel_values``, like a transformers processor (what policies/vla.py calls)."""

    def __init__(self, image_processor: OpenVLAImageProcessor, tokenizer: Any, *, num_images: int = 1,
                 proprio_stats: dict | None = None) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.num_patches = (image_processor.size[0] // PATCH) * (image_processor.size[1] // PATCH)
        self.num_images = num_images
        # OFT: the robot state's statistics (norm_stats[key]["proprio"]: q01, q99[, mask]); None = no proprio token
        self.proprio_stats = proprio_stats

    @classmethod
    def from_pretrained(cls, directory: str | Path, **_: Any) -> OpenVLAProcessor:
        from transformers import LlamaTokenizerFast

        d = Path(directory)
        image_processor = OpenVLAImageProcessor.from_config(check_json(d / PREPROCESSOR_CONFIG))
        # AutoTokenizer would stop at the checkpoint's auto_map: the Llama tokenizer is loaded directly
        tokenizer = LlamaTokenizerFast.from_pretrained(str(d))
        tokenizer.padding_side = "left"
        return cls(image_processor, tokenizer)

    def token_ids(self, text: str) -> list[int]:
        """BOS + the prompt's ids + 29871 when missing, with the image placeholders (and OFT's proprio placeholder)
        after BOS."""
        ids = list(self.tokenizer(text)["input_ids"])
        if ids[-1] != SPACE_TOKEN_ID:
            ids.append(SPACE_TOKEN_ID)
        extra = [PROPRIO_TOKEN_ID] if self.proprio_stats is not None else []
        return ids[:1] + [IMAGE_TOKEN_ID] * (self.num_patches * self.num_images) + extra + ids[1:]

    def normalize_proprio(self, state: Any) -> torch.Tensor:
        """OFT's ``normalize_proprio`` with the q01 / q99 statistics: ``[B, P]`` float32 in [-1, 1]."""
        stats = self.proprio_stats or {}
        x = np.asarray(state, np.float64)
        low, high = np.asarray(stats["q01"], np.float64), np.asarray(stats["q99"], np.float64)
        if x.shape[-1] != len(low):
            raise ValueError(f"the robot state has {x.shape[-1]} values, the checkpoint's proprio statistics {len(low)}")
        mask = np.asarray(stats.get("mask", [True] * len(low)), bool)
        out = np.clip(np.where(mask, 2 * (x - low) / (high - low + 1e-8) - 1, x), -1.0, 1.0)
        return torch.as_tensor(out, dtype=torch.float32)

    def __call__(self, images: list[Any], text: list[str], return_tensors: str = "pt", padding: bool = True,
                 proprio: Any = None, **_: Any) -> dict[str, torch.Tensor]:
        """``images``: one picture per sample, or a list of ``num_images`` pictures per sample (OFT: third-person,
        wrist); ``proprio``: the raw robot states ``[B, P]`` when the processor has proprio statistics."""
        rows = [self.token_ids(t) for t in text]
        length = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.tensor([[pad] * (length - len(r)) + r for r in rows], dtype=torch.long)
        mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        views = [list(v) if isinstance(v, (list, tuple)) else [v] for v in images]
        if any(len(v) != self.num_images for v in views):
            raise ValueError(f"each sample needs {self.num_images} picture(s) (model.num_images), got "
                             f"{sorted({len(v) for v in views})}")
        # [B, 6 V, S, S]: every view through the same transform, stacked on channels (view-major, as OFT)
        pixels = torch.cat([self.image_processor([v[k] for v in views]) for k in range(self.num_images)], dim=1)
        out = {"input_ids": input_ids, "attention_mask": mask, "pixel_values": pixels}
        if self.proprio_stats is not None:
            if proprio is None:
                raise ValueError("this model reads the robot state (model.use_proprio=true): the env must give "
                                 "obs['state'] (env.state_obs=true)")
            out["proprio"] = self.normalize_proprio(proprio)
        return out

    def save_pretrained(self, directory: str | Path) -> None:
        d = Path(directory)
        (d / PREPROCESSOR_CONFIG).write_text(json.dumps(self.image_processor.to_dict(), indent=2, sort_keys=True) + "\n")
        (d / PROCESSOR_CONFIG).write_text(json.dumps({"processor_class": "OpenVLAProcessor"}, indent=2) + "\n")
        self.tokenizer.save_pretrained(str(d))
