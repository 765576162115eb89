"""Parallel decoding of a whole action chunk in one forward pass, the OpenVLA-OFT way.

OFT (Kim et al. 2025, moojink/openvla-oft ``modeling_prismatic.py``) appends to the prompt one *slot* per action
token (H steps x A dims) and a stop token, zeroes the slots' input embeddings, and runs the language model with
**bidirectional** attention over the whole sequence (padding masked); the logits of the D = H x A action tokens
are read at the positions just before the slots (the usual one-position shift of a causal LM). The slots carry
no information of their own -- their embedding is 0 whatever token id they hold -- so every token's distribution
depends on the observation only: the D tokens are conditionally independent, sampled in one pass, and the
teacher-forced update recomputes exactly the rollout's distribution (``autoregressive = False`` for the credit
code, ALGORITHM.md §5).

OFT's released code gets the bidirectional attention from a patched transformers fork (SDPA only; its eager path
stays causal, and users report 98% -> 52% success with the wrong install, openvla-oft#135). Here the mask is built
with transformers' own mask interface (:func:`transformers.masking_utils.create_bidirectional_mask`), materialised
as a 4-D mask for whichever attention implementation the model runs (SDPA and eager give the same numbers), and
handed to the decoder, which then uses it as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["DECODINGS", "ParallelLayout", "bidirectional_mask", "zeroed_slots"]

DECODINGS = ("autoregressive", "parallel")


@dataclass
class ParallelLayout:
    """The sequence of a parallel-decoding forward: ``prompt [B, L]`` + ``D`` slots + the stop token.

    ``input_ids [B, L + D + 1]``, ``attention_mask [B, L + D + 1]`` (the prompt's padding, then ones), ``slots
    [B, L + D + 1]`` bool (the positions whose embedding is zeroed), and ``logit_positions``: the D positions whose
    hidden states predict the D action tokens (``L - 1 .. L + D - 2``)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    slots: torch.Tensor
    prompt_length: int
    action_tokens: int

    @classmethod
    def build(cls, input_ids: torch.Tensor, attention_mask: torch.Tensor, action_tokens: int, slot_id: int,
              stop_id: int) -> ParallelLayout:
        B, L = input_ids.shape
        D = action_tokens
        suffix = torch.full((B, D + 1), slot_id, dtype=input_ids.dtype, device=input_ids.device)
        suffix[:, -1] = stop_id  # OFT keeps the stop token: it is in the sequence at training time
        ids = torch.cat([input_ids, suffix], dim=1)
        mask = torch.cat([attention_mask, attention_mask.new_ones(B, D + 1)], dim=1)
        slots = torch.zeros_like(ids, dtype=torch.bool)
        slots[:, L:L + D] = True
        return cls(ids, mask, slots, L, D)

    @property
    def logit_positions(self) -> slice:
        return slice(self.prompt_length - 1, self.prompt_length - 1 + self.action_tokens)


def bidirectional_mask(text_config, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The 4-D attention mask of full (bidirectional) attention over ``attention_mask [B, T]``'s tokens, padding
    masked as keys, in the format of ``text_config``'s attention implementation (bool for SDPA, additive for eager).

    Always materialised: a missing mask would make SDPA fall back to ``is_causal=True``."""
    from transformers.masking_utils import create_bidirectional_mask

    B, T = attention_mask.shape
    shape_only = torch.empty(B, T, 1, dtype=dtype, device=attention_mask.device)  # read for batch, length, dtype
    mask = create_bidirectional_mask(config=text_config, inputs_embeds=shape_only, attention_mask=attention_mask,
                                     allow_is_bidirectional_skip=False)
    if mask is None or not isinstance(mask, torch.Tensor) or mask.ndim != 4:
        raise ValueError(f"attention implementation {text_config._attn_implementation!r} gives no dense 4-D mask; "
                         "parallel decoding needs model.attn_implementation=sdpa or eager")
    return mask


@contextmanager
def zeroed_slots(embeddings: nn.Module, slots: torch.Tensor) -> Iterator[None]:
    """While active, the outputs of ``embeddings`` (the input-embedding layer) are multiplied by ``~slots`` --
    OFT's ``input_embeddings * ~all_actions_mask`` -- for any model that embeds its ``input_ids`` through it."""
    keep = (~slots)[..., None]

    def hook(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        if output.shape[:2] != slots.shape:
            raise RuntimeError(f"zeroed_slots: embedded {tuple(output.shape[:2])} tokens, slots are {tuple(slots.shape)}")
        return output * keep.to(output.dtype)

    handle = embeddings.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
