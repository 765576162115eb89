"""``policy`` (what acts), ``model`` (the VLA checkpoint and how it is loaded) and its ``model.lora``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional  # noqa: UP035 - OmegaConf reads typing generics

from .choices import ACTION_HEADS, ACTION_TOKEN_MODES, DTYPES, POLICY_TYPES, VALUE_NETWORKS, at_least
from .choices import not_one_of as _not_one_of

__all__ = ["LoraConfig", "ModelConfig", "PolicyConfig"]


@dataclass
class PolicyConfig:
    type: str = "mlp"
    """``mlp`` (independent heads per dim), ``ar_mlp`` (autoregressive over dims) or ``vla`` (see ``model``)."""
    hidden_size: int = 64
    """Width of the policy trunk; also the width of the state feature the heads read."""
    num_layers: int = 2
    """Layers of the policy trunk."""
    value_hidden_size: int = 64
    """Width of the value head MLP."""
    value_stop_gradient: bool = False
    """Detach the state feature for the value head: the value loss never moves the policy's backbone
    (keeps a cloned VLA intact while a fresh value head learns the return scale)."""
    value_network: str = "shared"
    """``shared``: the value head reads the policy's state feature; ``separate`` (state policies): a critic of
    its own on the observation, ``num_layers`` x ``value_hidden_size`` tanh (CleanRL's continuous PPO)."""
    orthogonal_init: bool = False
    """State policies: CleanRL's initialisation (orthogonal, gain sqrt 2 for hidden layers, 0.01 for the policy
    logits, 1 for the separate critic's output) instead of PyTorch's default."""

    def problems(self, cfg: Any) -> list[str]:  # cfg: the run.TrainConfig
        out = [] if self.type in POLICY_TYPES else [_not_one_of("policy.type", self.type, POLICY_TYPES)]
        if self.value_network not in VALUE_NETWORKS:
            out.append(_not_one_of("policy.value_network", self.value_network, VALUE_NETWORKS))
        if self.value_network == "separate" and self.type == "vla":
            out.append("policy.value_network=separate is for state policies; a VLA's value head reads its "
                       "state feature (policy.value_network=shared)")
        out += at_least([("policy.hidden_size", self.hidden_size, 1), ("policy.num_layers", self.num_layers, 1),
                         ("policy.value_hidden_size", self.value_hidden_size, 1)])
        if self.type != "vla" and cfg.env.observation == "image":
            out.append(f"policy.type={self.type!r} reads state vectors: use env.observation=state or policy.type=vla")
        return out


@dataclass
class LoraConfig:
    enabled: bool = True
    """Train a LoRA adapter (peft); false = full fine-tuning of the language model."""
    r: int = 32
    """LoRA rank."""
    alpha: int = 64
    """LoRA alpha (scale = alpha / r)."""
    dropout: float = 0.0
    """LoRA dropout (0 keeps rollout and update log-probs identical)."""
    target_modules: Optional[str] = None  # noqa: UP045
    """Anchored regex of module names to adapt; null = the architecture's language-model linears."""
    include_vision: bool = False
    """Also adapt the vision tower's linears (and train it under full fine-tuning)."""


@dataclass
class ModelConfig:
    name_or_path: Optional[str] = None  # noqa: UP045
    """VLM / VLA checkpoint: a local dir (e.g. from scripts/make_tiny_vla.py) or a Hub id."""
    revision: Optional[str] = None  # noqa: UP045
    """Hub revision (branch, tag or commit) of ``name_or_path``."""
    tiny_arch: Optional[str] = None  # noqa: UP045
    """``pipeline`` only: build a tiny random model of this architecture (paligemma, paligemma2, qwen2_5_vl,
    smolvlm, llava) at ``name_or_path`` if nothing is there (offline demo runs)."""
    trust_remote_code: bool = False
    """Run code shipped with the checkpoint; off unless you trust its author."""
    dtype: str = "float32"
    """Weights dtype: ``float32``, ``bfloat16`` or ``float16`` (heads and log-probs stay float32)."""
    attn_implementation: Optional[str] = None  # noqa: UP045
    """transformers attention kernel (``sdpa``, ``eager``, ``flash_attention_2`` ...); null = the model's default."""
    action_tokens: str = "auto"
    """Bin tokens: ``auto`` (the model's own: ``openvla`` for OpenVLA checkpoints, else ``last_k``), ``last_k``
    (reuse the last K vocabulary ids), ``add`` (new ``<act_k>`` tokens) or ``openvla`` (OpenVLA's coding)."""
    unnorm_key: Optional[str] = None  # noqa: UP045
    """OpenVLA: the dataset whose action statistics (``norm_stats`` in config.json) un-normalise the actions,
    e.g. ``bridge_orig`` or ``libero_spatial``; null when the checkpoint has one."""
    feature_layer: int = -1
    """Decoder layer whose hidden state at the last prompt token is the state feature (-1 = last)."""
    prompt: str = "In: What action should the robot take to {instruction}?\nOut:"
    """Prompt template; ``{instruction}`` is the env's instruction."""
    rollout_temperature: float = 1.0
    """Temperature of the policy PPO trains: bin logits are divided by it in rollouts AND in the update, so
    the importance ratio is exact (evaluation is greedy or uses ``eval.temperature``)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (saves memory on big models)."""
    num_images: int = 1
    """Pictures per observation (OpenVLA-OFT's official layout: 2 = third-person + wrist camera; the env gives
    ``obs["image"] [N, V, H, W, 3]``)."""
    use_proprio: bool = False
    """OpenVLA-OFT: feed the robot state (``obs["state"]``) as one token through the checkpoint's proprio projector
    (``proprio_projector--*_checkpoint.pt``)."""
    action_head: str = "tokens"
    """``tokens``: act with the LM head's action tokens (what PPO trains). ``l1``: OpenVLA-OFT's L1 regression head
    (``action_head--*_checkpoint.pt``), continuous actions: evaluation and predict only."""
    lora: LoraConfig = field(default_factory=LoraConfig)

    def problems(self, cfg: Any) -> list[str]:  # cfg: the run.TrainConfig
        out = []
        for key, value, options in (("model.action_tokens", self.action_tokens, ACTION_TOKEN_MODES),
                                    ("model.dtype", self.dtype, DTYPES),
                                    ("model.action_head", self.action_head, ACTION_HEADS)):
            if value not in options:
                out.append(_not_one_of(key, value, options))
        if self.num_images < 1:
            out.append(f"model.num_images must be >= 1, got {self.num_images}")
        if self.action_head == "l1" and cfg.action.decoding != "parallel":
            out.append("model.action_head=l1 reads the hidden states of OpenVLA-OFT's parallel-decoded action "
                       "slots: set action.decoding=parallel (and action.chunk_size to the checkpoint's chunk)")
        if cfg.policy.type != "vla":
            return out
        if not self.name_or_path and not cfg.init_from:
            out.append("policy.type=vla needs model.name_or_path (a VLM / VLA checkpoint dir or Hub id, "
                       "e.g. one written by scripts/make_tiny_vla.py) or init_from")
        if cfg.env.observation != "image":
            out.append("policy.type=vla reads images: set env.observation=image")
        if self.lora.r < 1:
            out.append(f"model.lora.r must be >= 1, got {self.lora.r}")
        if self.rollout_temperature <= 0:
            out.append("model.rollout_temperature must be > 0")
        if "{instruction}" not in self.prompt:
            out.append("model.prompt must contain '{instruction}'")
        if cfg.ppo.kl_coef > 0 and not self.lora.enabled:
            out.append("ppo.kl_coef > 0 uses the adapter-disabled model as the reference: it needs "
                       "model.lora.enabled=true")
        return out
