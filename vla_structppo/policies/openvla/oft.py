"""OpenVLA-OFT's official-layout extras: the L1 regression action head and the proprio projector, and their files.

The released OFT checkpoints (``moojink/openvla-7b-oft-finetuned-libero-*``) are OpenVLA checkpoints (config.json,
safetensors shards; the LoRA already merged) plus two files the original ``vla-scripts/finetune.py`` writes beside
them with ``torch.save(module.state_dict())`` -- keys prefixed ``module.`` when trained under DDP:

* ``action_head--<step>_checkpoint.pt``: ``L1RegressionActionHead`` = an MLP-ResNet (LayerNorm, Linear, ReLU, two
  pre-LayerNorm residual blocks, LayerNorm, Linear) mapping the last-layer hidden states of one env step's
  ``A`` action slots, concatenated (``A x llm_dim``), to that step's ``A`` normalised actions;
* ``proprio_projector--<step>_checkpoint.pt``: ``ProprioProjector`` = Linear(proprio_dim, llm_dim), GELU,
  Linear(llm_dim, llm_dim): the robot state (normalised like the actions and clipped to [-1, 1]) as ONE extra
  token right after the image patches.

Parameter names are the original's, so the files load strictly. The SFT checkpoints that SimpleVLA-RL and RLinf
RL-train (``Haozhan72/Openvla-oft-SFT-libero*``) have neither file: they act through the LM head's action tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ...files import state_dict_mismatch
from ..vla_arch import VLACheckpointError

__all__ = ["OFT_FILES", "L1ActionHead", "ProprioProjector", "find_oft_file", "load_oft_module"]

# component -> what the file is, for error messages
OFT_FILES = {"action_head": "the L1 regression action head (model.action_head=l1)",
             "proprio_projector": "the proprio projector (model.use_proprio=true)"}


class _ResidualBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffn(x)


class _MLPResNet(nn.Module):
    def __init__(self, num_blocks: int, input_dim: int, hidden_dim: int, output_dim: int) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(input_dim)
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.mlp_resnet_blocks = nn.ModuleList(_ResidualBlock(hidden_dim) for _ in range(num_blocks))
        self.layer_norm2 = nn.LayerNorm(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.fc1(self.layer_norm1(x)))
        for block in self.mlp_resnet_blocks:
            x = block(x)
        return self.fc2(self.layer_norm2(x))


class L1ActionHead(nn.Module):
    """Normalised actions ``[B, H, A]`` from the hidden states of the ``H x A`` action slots ``[B, H * A, llm_dim]``."""

    def __init__(self, llm_dim: int, action_dim: int) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.model = _MLPResNet(2, llm_dim * action_dim, llm_dim, action_dim)

    def forward(self, slot_hidden: torch.Tensor) -> torch.Tensor:
        B, D, _ = slot_hidden.shape
        per_step = slot_hidden.reshape(B, D // self.action_dim, -1)  # [B, H, A * llm_dim]
        return self.model(per_step)


class ProprioProjector(nn.Module):
    """The normalised robot state ``[B, P]`` -> one token embedding ``[B, llm_dim]``."""

    def __init__(self, llm_dim: int, proprio_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, llm_dim)
        self.fc2 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1 = nn.GELU()

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act_fn1(self.fc1(proprio)))


def find_oft_file(directory: str | Path, component: str) -> Path:
    """The one ``<component>--*checkpoint.pt`` file of an OFT checkpoint dir; missing or ambiguous files are named."""
    d = Path(directory)
    found = sorted(p for p in d.glob(f"{component}*") if "checkpoint" in p.name and p.is_file())
    if len(found) != 1:
        what = OFT_FILES.get(component, component)
        listing = ", ".join(p.name for p in found) or "none"
        raise VLACheckpointError(f"{d} needs exactly one {component}--<step>_checkpoint.pt file for {what}; found "
                                 f"{listing}. Download it with the checkpoint (the official OFT releases ship it), or "
                                 "use the LM head's action tokens (model.action_head=tokens, model.use_proprio=false)")
    return found[0]


def load_oft_module(module: nn.Module, path: Path) -> None:
    """Strict load of a ``torch.save``d state dict, DDP's ``module.`` prefix removed (as the original loader does)."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:
        raise VLACheckpointError(f"{path} is not a readable state dict ({type(err).__name__}: {err})") from None
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = module.state_dict()
    mismatch = state_dict_mismatch(own, state, limit=4)
    if mismatch:
        raise VLACheckpointError(f"{path} does not fit this model (another LLM width, action or proprio size?): "
                                 f"{mismatch}")
    module.load_state_dict({k: v.to(next(iter(own.values())).dtype) for k, v in state.items()})
