"""The two ViTs of OpenVLA's fused vision backbone, as plain torch modules with timm's parameter names.

timm itself cannot be used here (it imports torchvision, which does not import beside the CPU torch
wheel), so the two architectures OpenVLA's checkpoints name are written out: DINOv2 ViT-L/14 with 4
register tokens and SigLIP So400m/14, both at 224 px (docs/vla.md#openvla). What OpenVLA takes from them
is the output of the **second-to-last** block, without the final norm, with the prefix tokens (DINO's
class + register tokens) dropped — so the last block, the final norm and SigLIP's attention-pooling head
are never built here; their weights are the checkpoint's known-unused keys (:func:`unused_keys`).

A ViT is described by :class:`ViTSpec`, looked up from the timm id in ``config.json``
(``timm_model_ids``): the two released ids, or ids of tiny test ViTs in this grammar (the same as the
reference scripts that run the original code):

* ``vit_dinov2reg_w{W}_d{D}_h{H}_p{P}``: the DINOv2-with-registers family at width W, depth D, H heads,
  patch P (4 registers, class token, LayerScale, MLP ratio 4);
* ``vit_siglip_w{W}_d{D}_h{H}_p{P}_m{M}``: the SigLIP family (no class token, no LayerScale) with MLP
  hidden size M.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..vla_arch import UnsupportedArchitectureError

__all__ = ["RELEASED_VITS", "ViT", "ViTSpec", "unused_keys", "unused_shapes", "vit_spec"]


@dataclass(frozen=True)
class ViTSpec:
    family: str  # "dinov2reg" or "siglip"
    width: int
    depth: int
    heads: int
    patch: int
    mlp_hidden: int

    @property
    def prefix_tokens(self) -> int:
        """Class + register tokens in front of the patches (DINOv2-reg: 1 + 4; SigLIP: none)."""
        return 5 if self.family == "dinov2reg" else 0

    @property
    def layer_scale(self) -> bool:
        return self.family == "dinov2reg"


RELEASED_VITS: dict[str, ViTSpec] = {
    # timm: patch 14, embed 1024, depth 24, 16 heads, reg_tokens 4, init_values 1e-5, no_embed_class
    "vit_large_patch14_reg4_dinov2.lvd142m": ViTSpec("dinov2reg", 1024, 24, 16, 14, 4096),
    # timm: patch 14, embed 1152, depth 27, 16 heads, mlp_ratio 3.7362 (int(1152 * 3.7362) = 4304), no class token
    "vit_so400m_patch14_siglip_224": ViTSpec("siglip", 1152, 27, 16, 14, 4304),
}
_TINY = {"dinov2reg": re.compile(r"^vit_dinov2reg_w(\d+)_d(\d+)_h(\d+)_p(\d+)$"),
         "siglip": re.compile(r"^vit_siglip_w(\d+)_d(\d+)_h(\d+)_p(\d+)_m(\d+)$")}


def vit_spec(timm_id: str) -> ViTSpec:
    """The architecture a timm id in an OpenVLA ``config.json`` names; unknown ids list the supported ones."""
    if timm_id in RELEASED_VITS:
        return RELEASED_VITS[timm_id]
    for family, pattern in _TINY.items():
        m = pattern.match(timm_id)
        if m:
            w, d, h, p = (int(x) for x in m.groups()[:4])
            mlp = int(m.group(5)) if family == "siglip" else 4 * w
            if d < 2 or w % h:
                raise UnsupportedArchitectureError(f"ViT id {timm_id!r}: needs depth >= 2 and heads dividing the width")
            return ViTSpec(family, w, d, h, p, mlp)
    raise UnsupportedArchitectureError(
        f"unknown vision backbone id {timm_id!r} in timm_model_ids; supported: {', '.join(RELEASED_VITS)} (the "
        "released OpenVLA checkpoints) and tiny test ViTs vit_dinov2reg_w{W}_d{D}_h{H}_p{P} / "
        "vit_siglip_w{W}_d{D}_h{H}_p{P}_m{M}")


def unused_keys(spec: ViTSpec) -> list[str]:
    """Key patterns (regex, relative to the ViT) the checkpoint holds but the features never use."""
    last = spec.depth - 1
    out = [rf"blocks\.{last}\..+", r"norm\.(weight|bias)"]
    if spec.family == "siglip":
        out.append(r"attn_pool\..+")
    return out


def unused_shapes(spec: ViTSpec) -> dict[str, tuple[int, ...]]:
    """Names and shapes of those unused tensors (a checkpoint writer must include them: the original
    loader requires every one)."""
    W, M, last = spec.width, spec.mlp_hidden, spec.depth - 1
    block = {"norm1.weight": (W,), "norm1.bias": (W,), "attn.qkv.weight": (3 * W, W), "attn.qkv.bias": (3 * W,),
             "attn.proj.weight": (W, W), "attn.proj.bias": (W,), "norm2.weight": (W,), "norm2.bias": (W,),
             "mlp.fc1.weight": (M, W), "mlp.fc1.bias": (M,), "mlp.fc2.weight": (W, M), "mlp.fc2.bias": (W,)}
    if spec.layer_scale:
        block.update({"ls1.scale_factor": (W,), "ls2.scale_factor": (W,)})
    out = {f"blocks.{last}.{k}": v for k, v in block.items()}
    out.update({"norm.weight": (W,), "norm.bias": (W,)})
    if spec.family == "siglip":  # timm's attention-pooling ("map") head
        out.update({"attn_pool.latent": (1, 1, W), "attn_pool.q.weight": (W, W), "attn_pool.q.bias": (W,),
                    "attn_pool.kv.weight": (2 * W, W), "attn_pool.kv.bias": (2 * W,),
                    "attn_pool.proj.weight": (W, W), "attn_pool.proj.bias": (W,), "attn_pool.norm.weight": (W,),
                    "attn_pool.norm.bias": (W,), "attn_pool.mlp.fc1.weight": (M, W), "attn_pool.mlp.fc1.bias": (M,),
                    "attn_pool.mlp.fc2.weight": (W, M), "attn_pool.mlp.fc2.bias": (W,)})
    return out


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # [3, B, h, N, d]
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # scale 1/sqrt(d), as timm's fused path
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class _LayerScale(nn.Module):
    """timm's LayerScale with OpenVLA's renaming of ``gamma`` to ``scale_factor``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale_factor = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_factor


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU, timm's default


class _Block(nn.Module):
    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        dim = spec.width
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, spec.heads)
        self.ls1 = _LayerScale(dim) if spec.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, spec.mlp_hidden)
        self.ls2 = _LayerScale(dim) if spec.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, spec.width, spec.patch, stride=spec.patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, N, C]


class ViT(nn.Module):
    """The patch features OpenVLA reads: ``[B, N, width]`` from the second-to-last block (module doc)."""

    def __init__(self, spec: ViTSpec, image_size: int) -> None:
        super().__init__()
        self.spec = spec
        n = (image_size // spec.patch) ** 2
        self.patch_embed = _PatchEmbed(spec)
        if spec.family == "dinov2reg":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.width))
            self.reg_token = nn.Parameter(torch.zeros(1, 4, spec.width))
        # no_embed_class (DINOv2-reg) and no class token (SigLIP): the position embedding covers the patches only
        self.pos_embed = nn.Parameter(torch.zeros(1, n, spec.width))
        self.blocks = nn.ModuleList(_Block(spec) for _ in range(spec.depth - 1))  # the last block is never read

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels) + self.pos_embed
        if self.spec.family == "dinov2reg":
            B = x.shape[0]
            x = torch.cat([self.cls_token.expand(B, -1, -1), self.reg_token.expand(B, -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return x[:, self.spec.prefix_tokens:]
