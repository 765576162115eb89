"""OpenVLA (Prismatic ``OpenVLAForActionPrediction``), native: no remote code, no timm.

The model is the released one, module for module and with its parameter names: ``vision_backbone``
(``featurizer`` = DINOv2-reg, ``fused_featurizer`` = SigLIP; vit.py), ``projector`` (``fc1`` 2176 -> 4x,
GELU, ``fc2`` -> LLM width, GELU, ``fc3``; exact GELU) and ``language_model``, transformers' own
``LlamaForCausalLM`` built from ``text_config``.

The original builds its sequence as ``[BOS] [256 projected patches] [rest of the prompt]`` from
embeddings. Here the processor writes 256 image placeholder ids right after BOS (``image_token_id``, an
id of the vocabulary's padding rows that no text ever produces) and the model puts the projected patches
at those positions, the way transformers' VLMs do. The embeddings, the causal attention over them and
the positions (0..T-1 from the attention mask) are then exactly the original's, and a left-padded
batch, a KV cache and the VLA policy's teacher-forced update work unchanged (policies/vla.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ..hf_compat import cache_keyword
from .vit import ViT, vit_spec

__all__ = ["IMAGE_TOKEN_ID", "PROPRIO_TOKEN_ID", "OpenVLAConfig", "OpenVLAForActionPrediction"]

# the placeholder of an image patch in the prompt: the first of the rows padding the 32000 real ids to 32064
IMAGE_TOKEN_ID = 32001
# OpenVLA-OFT's proprio token (right after the image patches): the next padding row
PROPRIO_TOKEN_ID = 32002


class OpenVLAConfig(PretrainedConfig):
    """The fields of an OpenVLA ``config.json`` this port reads; everything else is kept as given."""

    model_type = "openvla"

    def __init__(self, text_config: dict | LlamaConfig | None = None, timm_model_ids: list[str] | None = None,
                 image_sizes: list[int] | None = None, use_fused_vision_backbone: bool = True,
                 n_action_bins: int = 256, norm_stats: dict | None = None, pad_to_multiple_of: int = 64,
                 image_token_id: int = IMAGE_TOKEN_ID, **kwargs: Any) -> None:
        if isinstance(text_config, dict):
            # the released files store the diff against LlamaConfig's defaults (rms_norm_eps 1e-6 included)
            text_config = LlamaConfig(**{k: v for k, v in text_config.items() if k != "model_type"})
        self.text_config = text_config if text_config is not None else LlamaConfig()
        self.timm_model_ids = list(timm_model_ids or [])
        self.image_sizes = list(image_sizes or [224, 224])
        self.use_fused_vision_backbone = use_fused_vision_backbone
        self.n_action_bins = n_action_bins
        self.norm_stats = norm_stats or {}
        self.pad_to_multiple_of = pad_to_multiple_of
        self.image_token_id = image_token_id
        super().__init__(**kwargs)

    def get_text_config(self, *args: Any, **kwargs: Any) -> LlamaConfig:
        return self.text_config

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["text_config"] = self.text_config.to_diff_dict()
        out.pop("auto_map", None)  # this port runs without the checkpoint's remote code
        return out


class _FusedBackbone(nn.Module):
    """DINOv2-reg on channels 0-2, SigLIP on 3-5 of the 6-channel image; features concatenated."""

    def __init__(self, config: OpenVLAConfig) -> None:
        super().__init__()
        if not config.use_fused_vision_backbone or len(config.timm_model_ids) != 2:
            from ..vla_arch import UnsupportedArchitectureError

            raise UnsupportedArchitectureError("only OpenVLA's fused DINOv2 + SigLIP backbone is supported "
                                               f"(use_fused_vision_backbone, two timm_model_ids), got "
                                               f"{config.timm_model_ids}")
        self.featurizer = ViT(vit_spec(config.timm_model_ids[0]), config.image_sizes[0])
        self.fused_featurizer = ViT(vit_spec(config.timm_model_ids[1]), config.image_sizes[1])

    @property
    def embed_dim(self) -> int:
        return self.featurizer.spec.width + self.fused_featurizer.spec.width

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 6 V, S, S]`` (V images, OFT's multi-image input: 6 channels each) -> ``[B, V * 256, 2176]``."""
        patches = []
        for image in torch.split(pixel_values, 6, dim=1):
            dino, siglip = torch.split(image, [3, 3], dim=1)
            patches.append(torch.cat([self.featurizer(dino), self.fused_featurizer(siglip)], dim=2))  # [B, 256, 2176]
        return torch.cat(patches, dim=1)


class _Projector(nn.Module):
    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
        self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


class _DecoderBody:
    """``model.model(...)``: the decoder without its output layer, as transformers' VLMs expose it (what
    policies/vla.py calls). Not a module: its parameters are the model's own."""

    def __init__(self, owner: OpenVLAForActionPrediction) -> None:
        self.owner = owner

    def __call__(self, **kwargs: Any) -> BaseModelOutputWithPast:
        return self.owner.decode(**kwargs)


class OpenVLAForActionPrediction(PreTrainedModel):
    config_class = OpenVLAConfig
    base_model_prefix = "language_model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["LlamaDecoderLayer"]

    def __init__(self, config: OpenVLAConfig) -> None:
        super().__init__(config)
        self.vision_backbone = _FusedBackbone(config)
        self.projector = _Projector(self.vision_backbone.embed_dim, config.text_config.hidden_size)
        self.language_model = LlamaForCausalLM(config.text_config)

    # -- what transformers' VLMs provide ------------------------------------------------------------
    @property
    def model(self) -> _DecoderBody:
        return _DecoderBody(self)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
              proprio_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings, with the projected image patches at the image placeholders and (OFT) the projected
        robot state ``proprio_embeds [B, llm_dim]`` (oft.py's projector, kept outside the model as the original keeps
        it in its own file) at the proprio placeholder."""
        embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is None:
            return embeds
        image = input_ids == self.config.image_token_id  # [B, L]
        patches = self.projector(self.vision_backbone(pixel_values.to(self.projector.fc1.weight.dtype)))
        if int(image.sum()) != patches.shape[0] * patches.shape[1]:
            raise ValueError(f"the prompts hold {int(image.sum())} image placeholders for {patches.shape[0]} samples of "
                             f"{patches.shape[1]} patches each; build inputs with OpenVLAProcessor")
        embeds = embeds.masked_scatter(image[..., None], patches.to(embeds.dtype))
        if proprio_embeds is not None:
            slot = input_ids == PROPRIO_TOKEN_ID  # [B, L]
            if int(slot.sum()) != len(input_ids):
                raise ValueError("the robot state needs one proprio placeholder per prompt; build inputs with "
                                 "OpenVLAProcessor(use_proprio=True)")
            embeds = embeds.masked_scatter(slot[..., None], proprio_embeds.to(embeds.dtype))
        return embeds

    def decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
               cache: Any = None, use_cache: bool | None = None, output_hidden_states: bool = False,
               return_dict: bool = True, proprio_embeds: torch.Tensor | None = None,
               past_key_values: Any = None, **kwargs: Any) -> BaseModelOutputWithPast:
        """The decoder body over the multimodal sequence (no output layer). ``cache`` (or, as transformers releases
        before the rename call it, ``past_key_values``): the KV cache of the earlier tokens."""
        cache = cache if cache is not None else past_key_values
        if cache is not None or (input_ids.shape[1] == 1 and pixel_values is None):
            pixel_values = proprio_embeds = None  # cached single-token steps: the image is in the cache already
        return self.language_model.model(inputs_embeds=self.embed(input_ids, pixel_values, proprio_embeds),
                                         attention_mask=attention_mask, position_ids=position_ids,
                                         **{cache_keyword(): cache},
                                         use_cache=use_cache, output_hidden_states=output_hidden_states)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                cache: Any = None, use_cache: bool | None = None, output_hidden_states: bool = False,
                **kwargs: Any) -> CausalLMOutputWithPast:
        """Full-vocabulary logits (float32) over the multimodal sequence, like the original's forward."""
        out = self.decode(input_ids, attention_mask, position_ids, pixel_values, cache, use_cache,
                          output_hidden_states=output_hidden_states)
        logits = self.get_output_embeddings()(out.last_hidden_state).float()
        return CausalLMOutputWithPast(logits=logits, past_key_values=getattr(out, "past_key_values", None),
                                      hidden_states=out.hidden_states)
