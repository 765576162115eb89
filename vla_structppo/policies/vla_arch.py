"""What differs between the supported vision-language architectures, in one table.

The VLA policy is written once; everything architecture-specific is a field here: where the language
model's layers live (LoRA targets), how the prompt mentions the image, PaliGemma's 1-indexed positions
and ``token_type_ids`` (prefix attends bidirectionally, generated tokens causally), Qwen-VL's 3-D
(M-RoPE) positions and ``mm_token_type_ids``, and Qwen's flat ``pixel_values``.

Nothing here imports torch or transformers: the preflight check (is this architecture supported?) runs
before anything heavy loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError

__all__ = ["ARCHS", "ArchSpec", "UnsupportedArchitectureError", "VLACheckpointError", "arch_for"]


class UnsupportedArchitectureError(UserError, ValueError):
    """A checkpoint whose architecture the VLA policy does not implement; the message lists the supported."""


class VLACheckpointError(UserError, FileNotFoundError):
    """A VLA model or checkpoint that cannot be loaded as given; the message names the file and the fix."""


@dataclass(frozen=True)
class ArchSpec:
    name: str
    language_model: str
    """Regex of the language model's module path (LoRA targets its layers only, by default)."""
    vision_model: str
    """Regex of the vision tower + projector path (adapted only with ``lora.include_vision``)."""
    image_text: str
    """What the prompt text must contain where the image goes ('' = the processor inserts it itself)."""
    position_offset: int = 0
    """First position id of a sequence (PaliGemma counts from 1)."""
    token_type_ids: bool = False
    """PaliGemma: 0 = image + prompt (bidirectional prefix), 1 = generated tokens (causal)."""
    mrope: bool = False
    """Qwen-VL: 3-D rotary positions from ``get_rope_index``; ``mm_token_type_ids`` mark image tokens."""
    flat_pixels: bool = False
    """Qwen-VL: ``pixel_values`` is ``[sum of patches, dim]`` rather than batch-first."""
    lowercase_instruction: bool = False
    """OpenVLA: the instruction is lower-cased in the prompt (as it was in training)."""
    native: bool = False
    """Loaded by this project's own classes (policies/openvla), not transformers' Auto classes."""
    action_tokens: str = "last_k"
    """The action coding ``model.action_tokens: auto`` picks: ``openvla`` for OpenVLA, else ``last_k``."""
    parallel_decoding: bool = False
    """``action.decoding: parallel`` works: the language model takes a 4-D attention mask and the policy's position
    ids as they are (a Llama text model behind a plain image-token merge; not PaliGemma's prefix mask nor
    Qwen-VL's M-RoPE, which build theirs from the 2-D mask)."""

    def lora_regex(self) -> str:
        return (rf"^{self.language_model}\.layers\.\d+\."
                r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$")


_QWEN = dict(language_model=r"model\.language_model", vision_model=r"model\.visual",
             image_text="<|vision_start|><|image_pad|><|vision_end|>", mrope=True, flat_pixels=True)
ARCHS: dict[str, ArchSpec] = {
    "paligemma": ArchSpec("paligemma", r"model\.language_model", r"model\.(vision_tower|multi_modal_projector)",
                          image_text="<image>", position_offset=1, token_type_ids=True),
    "qwen2_5_vl": ArchSpec("qwen2_5_vl", **_QWEN),
    "idefics3": ArchSpec("idefics3", r"model\.text_model", r"model\.(vision_model|connector)", image_text="<image>",
                         parallel_decoding=True),
    "llava": ArchSpec("llava", r"model\.language_model", r"model\.(vision_tower|multi_modal_projector)",
                      image_text="<image>", parallel_decoding=True),
    # Prismatic's parameter names: the Llama under language_model, the fused ViTs + projector beside it
    "openvla": ArchSpec("openvla", r"language_model\.model", r"(vision_backbone|projector)", image_text="",
                        lowercase_instruction=True, native=True, action_tokens="openvla", parallel_decoding=True),
}


def arch_for(model_config: dict, *, trust_remote_code: bool = False) -> ArchSpec:
    """The :class:`ArchSpec` of a checkpoint's ``config.json`` content; clear errors otherwise."""
    model_type = model_config.get("model_type")
    supported = ", ".join(f"{k} ({_FAMILY[k]})" for k in ARCHS)
    if model_type in ARCHS:  # OpenVLA's auto_map is ignored: it is loaded natively, no remote code runs
        return ARCHS[model_type]
    if "auto_map" in model_config and not trust_remote_code:
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} ships its own code (auto_map) and model.trust_remote_code is false. "
            f"Supported architectures: {supported}. Other remote-code models are not supported; convert the "
            "checkpoint to one of these.")
    raise UnsupportedArchitectureError(
        f"unsupported VLA architecture model_type={model_type!r}. Supported: {supported}.")


_FAMILY = {"paligemma": "PaliGemma, PaliGemma2", "qwen2_5_vl": "Qwen2.5-VL",
           "idefics3": "SmolVLM / Idefics3", "llava": "LLaVA", "openvla": "OpenVLA and its LIBERO fine-tunes"}
