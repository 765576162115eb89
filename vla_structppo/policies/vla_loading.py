"""Build a :class:`VLAPolicy` from a config: preflight checks, model + processor + action tokenizer, LoRA.

Order matters for users: :func:`preflight` reads only small JSON files and fails — with the fix in the
message — on an unsupported architecture, remote code not allowed, a vocabulary that cannot hold the
bins, action dims that do not match the env, or a checkpoint missing a file, *before* any weights load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ModelConfig, TrainConfig
from .action_tokenizer import FILE_NAME as ACTION_TOKENIZER_FILE
from .action_tokenizer import ActionTokenizer, ActionTokenizerError
from .vla_arch import ArchSpec, arch_for, read_model_config

__all__ = ["VLAFiles", "apply_lora", "load_vla_policy", "policy_files", "preflight"]

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
FULL_MODEL_FILES = ("config.json", "model.safetensors")


class VLACheckpointError(FileNotFoundError):
    """A VLA checkpoint dir that lacks a file it needs; the message names it."""


@dataclass
class VLAFiles:
    """Where each part comes from, resolved by :func:`preflight`."""

    base: str  # the transformers checkpoint (dir or Hub id) the weights load from
    arch: ArchSpec
    processor_from: str
    adapter_from: str | None  # a dir with a peft adapter to start from
    action_tokenizer: ActionTokenizer | None  # None: build a new one from the vocabulary


def policy_files(directory: Path, lora: bool) -> list[str]:
    """The files a checkpoint of the VLA policy must hold."""
    weights = list(ADAPTER_FILES) if lora else list(FULL_MODEL_FILES)
    return [*weights, ACTION_TOKENIZER_FILE, "processor_config.json"]


def _is_local(path: str) -> bool:
    return Path(path).exists()


def _vocab_size(model_config: dict) -> int | None:
    text = model_config.get("text_config") or {}
    return text.get("vocab_size") or model_config.get("vocab_size")


def _check_files(directory: Path, names: list[str], what: str) -> None:
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        raise VLACheckpointError(f"{what} {directory} is missing {missing}; it is incomplete or was not written by "
                                 "vla-structppo (train / sft write adapter, heads, action tokenizer and processor)")


def preflight(cfg: TrainConfig) -> VLAFiles:
    """Resolve and check every file of the VLA policy without loading weights."""
    m = cfg.model
    init_from = cfg.init_from
    if init_from and init_from.startswith("hf://"):  # a pushed run: download it, then check it as a local dir
        from ..hub import resolve_checkpoint

        init_from = str(resolve_checkpoint(init_from))
    init = Path(init_from) if init_from else None
    base = m.name_or_path
    if init is not None:
        if not init.is_dir():
            raise VLACheckpointError(f"init_from={str(init)!r} does not exist or is not a directory")
        saved = _saved_model_path(init)
        base = base or saved
    if not base:
        raise VLACheckpointError("no model: set model.name_or_path (or init_from a VLA checkpoint)")
    if init is not None and (init / "adapter_config.json").exists():
        _check_files(init, [*ADAPTER_FILES, ACTION_TOKENIZER_FILE], "init_from checkpoint")
        adapter_from, weights_from = str(init), base
    elif init is not None:
        _check_files(init, [*FULL_MODEL_FILES, ACTION_TOKENIZER_FILE], "init_from checkpoint")
        adapter_from, weights_from = None, str(init)
    else:
        adapter_from, weights_from = None, base
    if not _is_local(weights_from) and (weights_from.startswith(("/", ".", "~")) or weights_from.count("/") > 1):
        raise VLACheckpointError(
            f"model.name_or_path={weights_from!r}: no such directory (a Hub id looks like org/name). Make a "
            "tiny local VLA with: python scripts/make_tiny_vla.py --arch llava --out DIR")
    model_config = read_model_config(weights_from) if _is_local(weights_from) else None
    if model_config is not None:
        arch = arch_for(model_config, trust_remote_code=m.trust_remote_code)
    else:  # a Hub id: the config comes with the download
        from transformers import AutoConfig

        mc = AutoConfig.from_pretrained(weights_from, revision=m.revision, trust_remote_code=m.trust_remote_code)
        model_config = mc.to_dict()
        arch = arch_for(model_config, trust_remote_code=m.trust_remote_code)

    at_dir = init if init is not None else (Path(weights_from) if _is_local(weights_from) else None)
    action_tokenizer = None
    if at_dir is not None and (at_dir / ACTION_TOKENIZER_FILE).exists():
        action_tokenizer = ActionTokenizer.load(at_dir)
        if action_tokenizer.mode != m.action_tokens:
            if init is not None:  # a trained checkpoint's bins are what its adapter learned
                raise ActionTokenizerError(
                    f"init_from={str(init)!r} uses action_tokens={action_tokenizer.mode!r} but the recipe says "
                    f"model.action_tokens={m.action_tokens!r}; set model.action_tokens={action_tokenizer.mode}")
            action_tokenizer = None  # a base model: build the bins the recipe asks for
    D, K = cfg.env.action_dims, cfg.env.num_bins
    if action_tokenizer is not None:
        if action_tokenizer.action_dims != D or action_tokenizer.num_bins != K:
            raise ActionTokenizerError(
                f"the checkpoint's action tokenizer has {action_tokenizer.action_dims} dims x "
                f"{action_tokenizer.num_bins} bins but the env is configured with env.action_dims={D}, "
                f"env.num_bins={K}; set them to match the model (a VLA's action dims are fixed by its training)")
        vocab = _vocab_size(model_config)
        if m.action_tokens == "last_k" and action_tokenizer.mode == "last_k" and vocab is not None \
                and max(action_tokenizer.token_ids) >= vocab:
            raise ActionTokenizerError(f"action token ids reach {max(action_tokenizer.token_ids)} but the model's "
                                       f"vocabulary has {vocab} ids")
    elif m.action_tokens == "last_k":
        vocab = _vocab_size(model_config)
        if vocab is not None and vocab < K + 1:
            raise ActionTokenizerError(
                f"the model's vocabulary ({vocab} tokens) cannot hold {K} action bins plus the prompt's tokens; "
                "use model.action_tokens=add (adds <act_k> tokens and resizes the embeddings) or fewer env.num_bins")
    processor_from = str(init) if init is not None and (init / "processor_config.json").exists() else weights_from
    return VLAFiles(weights_from, arch, processor_from, adapter_from, action_tokenizer)


def _saved_model_path(checkpoint: Path) -> str | None:
    cfg_file = checkpoint / "config.yaml"
    if not cfg_file.is_file():
        return None
    from ..config import config_from_yaml_text

    return config_from_yaml_text(cfg_file.read_text()).model.name_or_path


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_vla_policy(cfg: TrainConfig, files: VLAFiles | None = None, *, bounds: tuple[list[float], list[float]]
                    | None = None):
    """The VLA policy of ``cfg`` (weights loaded, LoRA applied, trainable parameters set)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from . import tiny  # noqa: F401 - registers the image-only Qwen processor where torchvision is missing
    from .vla import VLAPolicy

    files = files or preflight(cfg)
    m = cfg.model
    common = dict(revision=m.revision if not _is_local(files.base) else None, trust_remote_code=m.trust_remote_code)
    processor = AutoProcessor.from_pretrained(files.processor_from, **common)
    processor.tokenizer.padding_side = "left"  # batched decoding: each prompt's last token at the row's end
    model = AutoModelForImageTextToText.from_pretrained(files.base, dtype=_dtype(m.dtype),
                                                        attn_implementation=m.attn_implementation, **common)
    tokenizer = processor.tokenizer
    action_tokenizer = files.action_tokenizer
    D, K = cfg.env.action_dims, cfg.env.num_bins
    low, high = bounds if bounds is not None else ([-1.0] * D, [1.0] * D)
    if action_tokenizer is None:
        if m.action_tokens == "add":
            strings = ActionTokenizer.added_token_strings(K)
            tokenizer.add_tokens(strings, special_tokens=False)
            ids = tokenizer.convert_tokens_to_ids(strings)
            action_tokenizer = ActionTokenizer.added(ids, strings, D, low, high)
        else:
            action_tokenizer = ActionTokenizer.last_k(len(tokenizer), D, K, low, high,
                                                      reserved_ids=_reserved_ids(tokenizer, model))
    elif bounds is not None:
        action_tokenizer.low, action_tokenizer.high = list(low), list(high)
    out_rows = model.get_output_embeddings().weight.shape[0]
    if max(action_tokenizer.token_ids) >= out_rows:  # added tokens: grow the embeddings to hold them
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if m.lora.enabled:
        model = apply_lora(model, files.arch, m, action_tokenizer, adapter_from=files.adapter_from)
    else:
        _set_full_finetune(model, files.arch, m.lora.include_vision)
    return VLAPolicy(model, processor, action_tokenizer, files.arch, prompt=m.prompt, feature_layer=m.feature_layer)


def _reserved_ids(tokenizer, model) -> list[int]:
    ids = set(tokenizer.all_special_ids)
    for key in ("image_token_id", "image_token_index", "video_token_id", "vision_start_token_id",
                "vision_end_token_id"):
        v = getattr(model.config, key, None)
        if isinstance(v, int):
            ids.add(v)
    return sorted(ids)


def lora_target_regex(model, arch: ArchSpec, m: ModelConfig) -> str:
    """The anchored regex of module names that get LoRA: exact names of the matching ``nn.Linear`` layers."""
    from torch import nn

    if m.lora.target_modules:
        return m.lora.target_modules
    lm = re.compile(arch.lora_regex())
    vision = re.compile(rf"^{arch.vision_model}\.")
    names = [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear)
             and (lm.match(n) or (m.lora.include_vision and vision.match(n)))]
    if not names:
        raise ValueError(f"no linear layer matches the {arch.name} LoRA targets {arch.lora_regex()!r}; set "
                         "model.lora.target_modules to a regex of this model's module names")
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def apply_lora(model, arch: ArchSpec, m: ModelConfig, action_tokenizer: ActionTokenizer, *,
               adapter_from: str | None = None):
    """Wrap ``model`` in a peft LoRA adapter (new, or loaded trainable from ``adapter_from``)."""
    import peft

    if adapter_from is not None:
        return peft.PeftModel.from_pretrained(model, adapter_from, is_trainable=True)
    kwargs: dict[str, Any] = {}
    if action_tokenizer.mode == "add":  # the new <act_k> rows must train and be saved with the adapter
        ids = list(action_tokenizer.token_ids)
        kwargs["trainable_token_indices"] = {"embed_tokens": ids}
        if not _tied(model):  # an untied output layer has its own new rows to train and save
            kwargs["trainable_token_indices"]["lm_head"] = ids
    config = peft.LoraConfig(r=m.lora.r, lora_alpha=m.lora.alpha, lora_dropout=m.lora.dropout,
                             target_modules=lora_target_regex(model, arch, m), bias="none", **kwargs)
    return peft.get_peft_model(model, config)


def _tied(model) -> bool:
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    return out is not None and out.weight.data_ptr() == inp.weight.data_ptr()


def _set_full_finetune(model, arch: ArchSpec, include_vision: bool) -> None:
    vision = re.compile(rf"^{arch.vision_model}\.")
    for name, p in model.named_parameters():
        p.requires_grad_(include_vision or not vision.match(name))


def load_policy_weights(policy, directory: Path) -> None:
    """Strictly load a checkpoint's adapter (or full model) weights into ``policy`` (resume)."""
    from safetensors.torch import load_file

    if hasattr(policy.model, "peft_config"):
        from peft import set_peft_model_state_dict

        path = directory / "adapter_model.safetensors"
        if not path.is_file():
            raise VLACheckpointError(f"checkpoint file missing: {path}")
        state = load_file(str(path))
        result = set_peft_model_state_dict(policy.model, state)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        missing = [k for k in (getattr(result, "missing_keys", []) or []) if "lora_" in k or "trainable_tokens" in k]
        if unexpected or missing:
            raise VLACheckpointError(f"{path} does not match this adapter: unexpected {unexpected[:5]}, "
                                     f"missing {missing[:5]}")
    else:
        path = directory / "model.safetensors"
        if not path.is_file():
            raise VLACheckpointError(f"checkpoint file missing: {path}")
        # save_pretrained writes the architecture's on-disk key names (and one copy of tied weights);
        # from_pretrained maps them back, then the live model takes the weights strictly
        from transformers import AutoModelForImageTextToText

        loaded = AutoModelForImageTextToText.from_pretrained(str(directory), dtype=policy.base_model.dtype)
        policy.base_model.load_state_dict(loaded.state_dict(), strict=True)
