"""Build a :class:`VLAPolicy`: preflight checks, model + processor + action tokenizer, LoRA.

Order matters for users: :func:`preflight` reads only small JSON files and fails — with the fix in the
message — on an unsupported architecture, remote code not allowed, a vocabulary that cannot hold the
bins or action dims that do not match the env, *before* any weights load. Where each part comes from
(the base model, an adapter or fully fine-tuned checkpoint to start from, the processor, the action
tokenizer) is decided by the checkpoint layer (vla_structppo/checkpoints) and handed in as
:class:`VLASources`; nothing here knows a run directory's layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..files import CorruptFileError, check_json, check_safetensors, hub_reachable
from . import processors  # noqa: F401 - registers the image-only Qwen2.5-VL processor where torchvision is missing
from .action_tokenizer import ActionTokenizer, ActionTokenizerError
from .vla_arch import ArchSpec, VLACheckpointError, arch_for

__all__ = ["DATASET_STATISTICS", "VLACheckpointError", "VLAFiles", "VLASources", "apply_lora", "check_model_weights",
           "load_vla_policy", "local_snapshot", "openvla_norm_stats", "preflight", "read_model_config",
           "resolve_action_tokens"]


DATASET_STATISTICS = "dataset_statistics.json"


@dataclass(frozen=True)
class VLASources:
    """Where each part of a VLA policy comes from (decided by vla_structppo.checkpoints)."""

    weights: str
    """The transformers checkpoint whose weights load: the base model (dir or Hub id) or a fully
    fine-tuned checkpoint dir of this project."""
    processor: str
    """Dir or Hub id of the processor (a checkpoint saves its own)."""
    adapter: Path | None = None
    """A peft adapter dir to load (trainable) on top of ``weights``."""
    action_tokenizer: Path | None = None
    """A dir holding ``action_tokenizer.json`` (a checkpoint's, or one shipped with the base model)."""
    trained: bool = False
    """The adapter / weights were trained with that action tokenizer, so the recipe must agree with it."""
    revision: str | None = None
    """Hub revision of ``weights`` / ``processor`` when they are Hub ids."""


@dataclass
class VLAFiles:
    """:class:`VLASources` after the preflight: the architecture and the action tokenizer, checked."""

    sources: VLASources
    arch: ArchSpec
    action_tokenizer: ActionTokenizer | None  # None: build a new one from the vocabulary


def _is_local(path: str) -> bool:
    return Path(path).exists()


def _vocab_size(model_config: dict) -> int | None:
    text = model_config.get("text_config") or {}
    return text.get("vocab_size") or model_config.get("vocab_size")


def _looks_local(name: str) -> bool:
    """A path the user meant as a directory: absolute / relative / home, nested, or under a local dir."""
    first = Path(name).parts[0] if Path(name).parts else ""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or (name.count("/") == 1 and Path(first).is_dir())


def read_model_config(path: str | Path) -> dict:
    """``config.json`` of a local model dir (light: no torch), or an error naming the file."""
    d = Path(path)
    try:
        model_config = check_json(d / "config.json")
    except CorruptFileError as err:
        raise VLACheckpointError(f"{err}: model.name_or_path must be a model dir with a valid config.json "
                                 "(e.g. one written by scripts/make_tiny_vla.py) or a Hub id") from None
    if not isinstance(model_config, dict):
        raise VLACheckpointError(f"{d / 'config.json'} is not a model config (a JSON object)")
    return model_config


def check_model_weights(path: str | Path) -> None:
    """The weights of a local model dir, checked without loading them: a single safetensors file or a
    sharded set (every shard of the index present and whole)."""
    d = Path(path)
    index = d / "model.safetensors.index.json"
    try:
        if index.is_file():
            shards = sorted(set((check_json(index).get("weight_map") or {}).values()))
            missing = [f for f in shards if not (d / f).is_file()]
            if missing or not shards:
                raise VLACheckpointError(f"{index} lists shards that are not in {d}: {missing or 'none listed'}; "
                                         "download the model again (all shards)")
            for shard in shards:
                check_safetensors(d / shard)
        elif (d / "model.safetensors").exists():
            check_safetensors(d / "model.safetensors")
        elif not any((d / f).is_file() for f in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
            raise VLACheckpointError(f"{d} has a config.json but no weights (model.safetensors, or shards with "
                                     "model.safetensors.index.json); download or save the model again")
    except CorruptFileError as err:
        raise VLACheckpointError(f"{err} (the weights of model.name_or_path={str(d)!r})") from None


def _hub_file(name: str, filename: str, revision: str | None) -> Path:
    """One file of a Hub model id: from the local cache, else downloaded when the Hub can be reached."""
    from huggingface_hub import hf_hub_download

    reachable = hub_reachable()
    try:
        return Path(hf_hub_download(name, filename, revision=revision, local_files_only=not reachable))
    except Exception as err:  # not found, gated, offline: say which, name the key
        where = "the Hub" if reachable else "the local Hugging Face cache (the Hub cannot be reached)"
        raise VLACheckpointError(
            f"model.name_or_path={name!r} is not a local directory, and {where} has no such model "
            f"({type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}). Give the dir of a "
            f"downloaded model (huggingface-cli download {name} --local-dir DIR) or a tiny local VLA "
            "(python scripts/make_tiny_vla.py --arch llava --out DIR)") from None


def local_snapshot(name: str, revision: str | None) -> str:
    """A local dir of ``name``: itself, or the Hub snapshot (downloaded into the Hugging Face cache)."""
    if _is_local(name):
        return name
    from huggingface_hub import snapshot_download

    return snapshot_download(name, revision=revision, local_files_only=not hub_reachable())


def resolve_action_tokens(m: ModelConfig, arch: ArchSpec) -> str:
    """``model.action_tokens`` with ``auto`` resolved to the architecture's own coding."""
    return arch.action_tokens if m.action_tokens == "auto" else m.action_tokens


def preflight(m: ModelConfig, action_dims: int, num_bins: int, sources: VLASources, *,
              parallel: bool = False) -> VLAFiles:
    """Check the model behind ``sources`` against the recipe without loading weights. ``parallel``: the policy
    decodes OpenVLA-OFT's way (an OpenVLA checkpoint is then an OFT one: its un-normalisation, its extra files)."""
    weights = sources.weights
    if _is_local(weights):
        model_config = read_model_config(weights)
    elif _looks_local(weights):
        raise VLACheckpointError(
            f"model.name_or_path={weights!r}: no such directory (a Hub id looks like org/name). Make a "
            "tiny local VLA with: python scripts/make_tiny_vla.py --arch llava --out DIR")
    else:
        model_config = check_json(_hub_file(weights, "config.json", sources.revision))
    arch = arch_for(model_config, trust_remote_code=m.trust_remote_code)
    mode = resolve_action_tokens(m, arch)
    if (mode == "openvla") != (arch.name == "openvla"):
        raise ActionTokenizerError(f"model.action_tokens={m.action_tokens!r} does not fit a {arch.name} model: OpenVLA "
                                   "checkpoints use their own coding (action_tokens=openvla, or auto)")

    action_tokenizer = None
    if sources.action_tokenizer is not None:
        action_tokenizer = ActionTokenizer.load(sources.action_tokenizer)
        if action_tokenizer.mode != mode:
            if sources.trained:  # a trained checkpoint's bins are what its adapter learned
                raise ActionTokenizerError(
                    f"the checkpoint {str(sources.action_tokenizer)!r} uses action_tokens={action_tokenizer.mode!r} "
                    f"but the recipe says model.action_tokens={m.action_tokens!r}; set "
                    f"model.action_tokens={action_tokenizer.mode}")
            action_tokenizer = None  # a base model: build the bins the recipe asks for
    if action_tokenizer is None and mode == "openvla":  # the checkpoint's own statistics, checked now
        action_tokenizer = ActionTokenizer.openvla(openvla_norm_stats(weights, model_config, sources.revision),
                                                   m.unnorm_key, oft=parallel)
    _check_oft_options(m, arch, sources)
    D, K = action_dims, num_bins
    vocab = _vocab_size(model_config)
    if action_tokenizer is not None:
        if action_tokenizer.action_dims != D or action_tokenizer.num_bins != K:
            raise ActionTokenizerError(
                f"the model's action tokenizer has {action_tokenizer.action_dims} dims x "
                f"{action_tokenizer.num_bins} bins but the env is configured with env.action_dims={D}, "
                f"env.num_bins={K}; set them to match the model (a VLA's action dims are fixed by its training)")
        if action_tokenizer.mode != "add" and vocab is not None and max(action_tokenizer.token_ids) >= vocab:
            raise ActionTokenizerError(f"action token ids reach {max(action_tokenizer.token_ids)} but the model's "
                                       f"vocabulary has {vocab} ids")
    elif mode == "last_k" and vocab is not None and vocab < K + 1:
        raise ActionTokenizerError(
            f"the model's vocabulary ({vocab} tokens) cannot hold {K} action bins plus the prompt's tokens; "
            "use model.action_tokens=add (adds <act_k> tokens and resizes the embeddings) or fewer env.num_bins")
    if _is_local(weights):  # last: what the config says is checked first, then the (large) weight files
        check_model_weights(weights)
        if arch.native:
            from .openvla.weights import check_openvla_keys

            check_openvla_keys(weights)
    return VLAFiles(sources, arch, action_tokenizer)


def openvla_norm_stats(weights: str, model_config: dict, revision: str | None = None) -> dict:
    """An OpenVLA checkpoint's dataset statistics: ``dataset_statistics.json`` beside the weights when there is one
    (OpenVLA-OFT's loader prefers it, ``_load_dataset_stats``), else config.json's ``norm_stats``. A Hub id is read
    the same way (the file from the Hub or its cache at ``revision``), so bins and proprio use one statistics file."""
    if _is_local(weights):
        path = Path(weights) / DATASET_STATISTICS
        return check_json(path) if path.is_file() else model_config.get("norm_stats") or {}
    try:
        return check_json(_hub_file(weights, DATASET_STATISTICS, revision))
    except VLACheckpointError:  # the model has no such file: its config.json's statistics are the ones
        return model_config.get("norm_stats") or {}


def _check_oft_options(m: ModelConfig, arch: ArchSpec, sources: VLASources) -> None:
    """OpenVLA-OFT's official-layout options need an OpenVLA checkpoint and, for the proprio token and the L1 head,
    their files beside the weights (openvla/oft.py): each missing one is named before anything loads."""
    wants = [name for name, on in (("model.num_images > 1", m.num_images > 1), ("model.use_proprio", m.use_proprio),
                                   ("model.action_head=l1", m.action_head == "l1")) if on]
    if not wants:
        return
    if arch.name != "openvla":
        raise VLACheckpointError(f"{', '.join(wants)} are OpenVLA-OFT's official-layout options; this checkpoint is "
                                 f"a {arch.name} model")
    from .openvla.oft import find_oft_file

    directory = local_snapshot(sources.weights, sources.revision)
    if m.use_proprio:
        find_oft_file(directory, "proprio_projector")
    if m.action_head == "l1":
        find_oft_file(directory, "action_head")


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_vla_policy(m: ModelConfig, action_dims: int, num_bins: int, files: VLAFiles, *,
                    bounds: tuple[list[float], list[float]] | None = None, chunk_size: int = 1,
                    decoding: str = "autoregressive"):
    """The VLA policy (weights loaded, LoRA applied or loaded, trainable parameters set). ``bounds``:
    the action normalisation bounds to use (SFT from a dataset's q01 / q99), else the tokenizer's.
    ``action_dims``: dims of one env step (A); the policy emits ``chunk_size x A`` tokens, decoded as ``decoding``."""
    from .vla import VLAPolicy

    src = files.sources
    if files.arch.native:  # OpenVLA: this project's classes, from the files (a Hub id is downloaded first)
        from .openvla import OpenVLAProcessor, load_openvla

        processor = OpenVLAProcessor.from_pretrained(local_snapshot(src.processor, src.revision))
        processor.num_images = m.num_images
        model = load_openvla(local_snapshot(src.weights, src.revision), _dtype(m.dtype), m.attn_implementation)
    else:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        common = dict(trust_remote_code=m.trust_remote_code)
        processor = AutoProcessor.from_pretrained(src.processor, revision=None if _is_local(src.processor)
                                                  else src.revision, **common)
        model = AutoModelForImageTextToText.from_pretrained(src.weights, dtype=_dtype(m.dtype),
                                                            revision=None if _is_local(src.weights) else src.revision,
                                                            attn_implementation=m.attn_implementation, **common)
    processor.tokenizer.padding_side = "left"  # batched decoding: each prompt's last token at the row's end
    tokenizer = processor.tokenizer
    action_tokenizer = files.action_tokenizer
    D, K = action_dims, num_bins
    low, high = bounds if bounds is not None else ([-1.0] * D, [1.0] * D)
    if action_tokenizer is None:
        if resolve_action_tokens(m, files.arch) == "add":
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
        model = apply_lora(model, files.arch, m, action_tokenizer, adapter_from=src.adapter)
    else:
        _set_full_finetune(model, files.arch, m.lora.include_vision)
    policy = VLAPolicy(model, processor, action_tokenizer, files.arch, prompt=m.prompt, feature_layer=m.feature_layer,
                       chunk_size=chunk_size, decoding=decoding)
    if m.use_proprio or m.action_head == "l1":
        _attach_oft_extras(policy, m, local_snapshot(src.weights, src.revision))
    return policy


def _attach_oft_extras(policy: Any, m: ModelConfig, directory: str) -> None:
    """OpenVLA-OFT's proprio projector and / or L1 head from their files (openvla/oft.py), frozen: they are
    evaluated, not trained."""
    from .openvla.oft import L1ActionHead, ProprioProjector, find_oft_file, load_oft_module

    model, tok = policy.base_model, policy.action_tokenizer
    llm_dim, dtype = policy.feature_dim, model.dtype
    if m.use_proprio:
        stats = openvla_norm_stats(directory, read_model_config(directory)).get(tok.unnorm_key, {}).get("proprio")
        if not stats or "q01" not in stats:
            raise VLACheckpointError(f"model.use_proprio=true, but the statistics of {tok.unnorm_key!r} have no proprio "
                                     f"q01 / q99 ({directory}/{DATASET_STATISTICS} or config.json norm_stats)")
        policy.processor.proprio_stats = stats
        projector = ProprioProjector(llm_dim, len(stats["q01"])).to(dtype)
        load_oft_module(projector, find_oft_file(directory, "proprio_projector"))
        policy.proprio_projector = projector.requires_grad_(False).to(policy.device)
    if m.action_head == "l1":
        head = L1ActionHead(llm_dim, tok.action_dims).to(dtype)
        load_oft_module(head, find_oft_file(directory, "action_head"))
        policy.action_head = head.requires_grad_(False).to(policy.device)


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
