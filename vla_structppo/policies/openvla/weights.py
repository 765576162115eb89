"""Loading the files users download (``huggingface-cli download openvla/openvla-7b``) and saving in the same layout.

``config.json`` (``model_type: openvla``; its ``auto_map`` is ignored — no remote code runs) and the weights:
one ``model.safetensors`` or shards listed by ``model.safetensors.index.json`` (bf16 in the releases).
Loading is strict: every parameter of the port must be in the files, and every key of the files must be a
parameter or one of the known-unused ones (:func:`known_unused`: the last block and final norm of each ViT,
SigLIP's attention-pooling head) — anything else missing or unexpected is named in the error. The model is
built on the meta device and the tensors are assigned, so a 7B checkpoint is never initialised twice.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ...files import check_json, check_safetensors
from ..vla_arch import VLACheckpointError
from .modeling import OpenVLAConfig, OpenVLAForActionPrediction
from .vit import unused_keys

__all__ = ["check_openvla_keys", "known_unused", "load_openvla", "read_openvla_config", "save_openvla", "weight_files"]

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def read_openvla_config(directory: str | Path) -> OpenVLAConfig:
    data = check_json(Path(directory) / "config.json")
    data = {k: v for k, v in data.items() if k not in ("auto_map", "model_type", "transformers_version")}
    return OpenVLAConfig(**data)


def known_unused(config: OpenVLAConfig) -> list[re.Pattern]:
    """Keys of a released checkpoint that the forward never reads (and the port does not build)."""
    from .vit import vit_spec

    out = []
    for name, timm_id in (("featurizer", config.timm_model_ids[0]), ("fused_featurizer", config.timm_model_ids[1])):
        out += [re.compile(rf"^vision_backbone\.{name}\.{pattern}$") for pattern in unused_keys(vit_spec(timm_id))]
    return out


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint dir: the shards of its index, else ``model.safetensors``."""
    d = Path(directory)
    if (d / INDEX).is_file():
        shards = sorted(set((check_json(d / INDEX).get("weight_map") or {}).values()))
        missing = [s for s in shards if not (d / s).is_file()]
        if missing or not shards:
            raise VLACheckpointError(f"{d / INDEX} lists shards that are not in {d}: {missing or 'none listed'}; "
                                     "download the checkpoint again (all shards)")
        return [d / s for s in shards]
    if (d / SINGLE).is_file():
        return [d / SINGLE]
    raise VLACheckpointError(f"{d} holds no weights ({SINGLE}, or shards with {INDEX})")


def _rotary_off_meta(model: OpenVLAForActionPrediction) -> None:
    """The Llama's rotary inverse frequencies are a non-persistent buffer computed at construction: the meta
    construction left them empty, so they are computed again, on the CPU, from the text config."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    model.language_model.model.rotary_emb = LlamaRotaryEmbedding(config=model.config.text_config)


def _account(model: OpenVLAForActionPrediction, keys_shapes: dict[str, tuple[int, ...]], where: Path) -> None:
    """Every parameter of the model in the files with its shape, every file key a parameter or known unused."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    unused = known_unused(model.config)
    unexpected = sorted(k for k in keys_shapes if k not in own and not any(p.match(k) for p in unused))
    missing = sorted(set(own) - set(keys_shapes))
    shapes = [f"{k}: {keys_shapes[k]} in the files, {own[k]} in the model" for k in sorted(set(own) & set(keys_shapes))
              if tuple(keys_shapes[k]) != own[k]]
    if missing or unexpected or shapes:
        raise VLACheckpointError(
            f"{where} does not match the OpenVLA architecture its config.json describes: missing {missing[:8]}"
            f"{f' (+{len(missing) - 8})' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
            f"{f' (+{len(unexpected) - 8})' if len(unexpected) > 8 else ''}, shape mismatches {shapes[:4]}")


def check_openvla_keys(directory: str | Path) -> None:
    """The key accounting of :func:`load_openvla` from the safetensors headers alone (no weights read)."""
    d = Path(directory)
    keys_shapes = {}
    for f in weight_files(d):
        keys_shapes.update({k: tuple(v["shape"]) for k, v in check_safetensors(f).items() if k != "__metadata__"})
    with torch.device("meta"):
        model = OpenVLAForActionPrediction(read_openvla_config(d))
    _account(model, keys_shapes, d)


def load_openvla(directory: str | Path, dtype: torch.dtype = torch.float32,
                 attn_implementation: str | None = None) -> OpenVLAForActionPrediction:
    """The model of an OpenVLA checkpoint dir, every parameter loaded (see the module doc)."""
    from safetensors import safe_open

    d = Path(directory)
    config = read_openvla_config(d)
    config.text_config._attn_implementation = attn_implementation or "sdpa"
    files = weight_files(d)
    for f in files:
        check_safetensors(f)
    with torch.device("meta"):
        model = OpenVLAForActionPrediction(config)
    own = model.state_dict()
    state, keys_shapes, unused = {}, {}, {}
    for f in files:
        with safe_open(str(f), "pt") as reader:
            for key in reader.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                keys_shapes[key] = tuple(reader.get_slice(key).get_shape())
                if key in own and keys_shapes[key] == tuple(own[key].shape):
                    state[key] = reader.get_tensor(key).to(dtype)
                elif key not in own:
                    unused[key] = reader.get_tensor(key)  # kept as they are, to be written back on save
    _account(model, keys_shapes, d)
    model.load_state_dict(state, strict=True, assign=True)
    model.unused_tensors = {k: v for k, v in unused.items() if any(p.match(k) for p in known_unused(config))}
    _rotary_off_meta(model)
    return model.eval()


def save_openvla(model: OpenVLAForActionPrediction, directory: str | Path, max_shard_bytes: int = 4 << 30) -> None:
    """``config.json`` + safetensors (sharded with an index above ``max_shard_bytes``), the layout :func:`load_openvla`
    and the original code read: with the known-unused tensors of the checkpoint the model was loaded from
    (``model.unused_tensors``), which the original loader requires."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    cfg.update(model_type="openvla", architectures=["OpenVLAForActionPrediction"])
    (d / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # the tensors the port never builds (a loaded checkpoint's, or a writer's), so the original code loads it
    dtype = next(iter(state.values())).dtype
    state.update({k: v.to(dtype) for k, v in getattr(model, "unused_tensors", {}).items()})
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(state):
        nbytes = state[key].numel() * state[key].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = state[key]
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(d / SINGLE), metadata={"format": "pt"})
        return
    weight_map = {}
    for n, shard in enumerate(shards, 1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(d / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(v.numel() * v.element_size() for v in state.values())
    (d / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
