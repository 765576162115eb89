"""A Hugging Face vision-language model as a D-dimensional action-token policy (the policy protocol).

Dim ``i`` of the action is the i-th action token, restricted to the K bin tokens of the action
tokenizer: ``log pi_i(a^i | s, a^{<i})`` is a log-softmax over those K logits only, in rollout and
update alike (ALGORITHM.md §1). With action chunks (``action.chunk_size: H``) the policy emits ``D = H x A``
tokens per decision, step-major (the A dims of step 0, then step 1 ...).

Two decodings (``action.decoding``). ``autoregressive``: ``act`` decodes the D tokens with the KV cache (one
prefill + D-1 single-token steps); ``evaluate`` is one teacher-forced forward over prompt + D tokens.
``parallel`` (OpenVLA-OFT, parallel_decoding.py): one forward over prompt + D zeroed slots + the stop token
with bidirectional attention gives all D distributions at once, for ``act`` and ``evaluate`` alike; the tokens
are then conditionally independent given the observation (``autoregressive = False``). Both compute
positions from the attention mask themselves, so a prompt padded on the left by a different amount
(rollout batch vs update minibatch) gets identical log-probs, and both pass the architecture's extra
inputs (PaliGemma's ``token_type_ids``, Qwen-VL's 3-D positions) the same way — otherwise the PPO
ratio is not 1 at the first minibatch (tests/test_vla.py checks both, and that dropping PaliGemma's
``token_type_ids`` breaks it).

The state feature is the hidden state of the last prompt token at ``feature_layer`` (the token the
first action token is predicted from, as RL4VLA and RLinf read their value head).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .action_tokenizer import ActionTokenizer
from .base import ActOutput, EvalOutput, categorical_stats, sample_bins
from .hf_compat import cache_keyword
from .parallel_decoding import DECODINGS, ParallelLayout, bidirectional_mask, zeroed_slots
from .vla_arch import ARCHS, ArchSpec, UnsupportedArchitectureError

__all__ = ["VLAPolicy"]

# 2-D ``[B, L]`` inputs that grow with the sequence and are padded on the left in ``collate``
_SEQ_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")


class VLAPolicy(nn.Module):
    """``model`` (a transformers VLM, optionally wrapped by peft) + processor + action tokenizer; ``chunk_size``
    env steps per decision, decoded ``autoregressive`` or ``parallel`` (module doc)."""

    def __init__(self, model: nn.Module, processor: Any, action_tokenizer: ActionTokenizer, arch: ArchSpec, *,
                 prompt: str = "In: What action should the robot take to {instruction}?\nOut:",
                 feature_layer: int = -1, chunk_size: int = 1, decoding: str = "autoregressive") -> None:
        super().__init__()
        self.model = model
        self.processor = processor
        self.action_tokenizer = action_tokenizer
        self.arch = arch
        self.prompt = prompt
        self.feature_layer = feature_layer
        # the policy's own temperature (PPO's rollout temperature): part of pi in act AND evaluate
        self.temperature = 1.0
        if decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
        if decoding == "parallel" and not arch.parallel_decoding:
            raise UnsupportedArchitectureError(
                f"action.decoding=parallel is implemented for {[a for a, s in ARCHS.items() if s.parallel_decoding]}, not "
                f"{arch.name}: its "
                "attention mask or positions are built inside the model; use action.decoding=autoregressive")
        self.chunk_size, self.decoding = int(chunk_size), decoding
        self.autoregressive = decoding == "autoregressive"  # parallel: tokens independent given the observation
        self.step_dims = action_tokenizer.action_dims  # A: dims of one env step
        self.action_dims = self.chunk_size * self.step_dims  # D = H x A tokens per decision
        self.num_bins = action_tokenizer.num_bins
        text_cfg = self.base_model.config.get_text_config()
        self.feature_dim = int(text_cfg.hidden_size)
        self.register_buffer("bin_token_ids", torch.tensor(action_tokenizer.token_ids, dtype=torch.long),
                             persistent=False)
        self._slot_id = int(action_tokenizer.token_ids[0])  # parallel decoding's slot token, kept on the host
        # OpenVLA-OFT's official-layout extras (openvla/oft.py), attached by the loader: the proprio projector (the
        # robot state as one token) and the L1 regression head (continuous actions: evaluation only)
        self.proprio_projector: nn.Module | None = None
        self.action_head: nn.Module | None = None
        tok = processor.tokenizer
        self.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        # parallel decoding ends the sequence with the stop token (OFT: </s>, id 2 for Llama)
        self.stop_token_id = tok.eos_token_id if tok.eos_token_id is not None else self.pad_token_id
        vocab = self.base_model.get_output_embeddings().weight.shape[0]
        if max(action_tokenizer.token_ids) >= vocab:
            raise ValueError(f"action token ids reach {max(action_tokenizer.token_ids)} but the model's output "
                             f"vocabulary has {vocab} rows")

    # -- model access -------------------------------------------------------------------------
    @property
    def base_model(self) -> nn.Module:
        """The transformers model underneath a peft wrapper (or the model itself)."""
        m = self.model
        return m.get_base_model() if hasattr(m, "get_base_model") else m

    @property
    def device(self) -> torch.device:
        return self.bin_token_ids.device

    def bin_embeddings(self) -> torch.Tensor:
        """The input-embedding rows of the K bin tokens ``[K, H]`` (the structured head's frozen bin embedding)."""
        return self.base_model.get_input_embeddings().weight[self.bin_token_ids].detach().float().clone()

    @contextmanager
    def reference(self) -> Iterator[None]:
        """The base model (adapter disabled): the reference policy of the optional KL term."""
        if hasattr(self.model, "disable_adapter"):
            with self.model.disable_adapter():
                yield
        else:
            raise RuntimeError("the reference policy needs a LoRA adapter (model.lora.enabled=true)")

    # -- inputs -----------------------------------------------------------------------------------
    def prompt_text(self, instruction: str) -> str:
        if self.arch.lowercase_instruction:  # OpenVLA was trained on lower-cased instructions
            instruction = instruction.lower()
        return self.arch.image_text + self.prompt.format(instruction=instruction)

    @property
    def num_images(self) -> int:
        """Pictures per observation the processor takes (OpenVLA-OFT: third-person + wrist; otherwise 1)."""
        return int(getattr(self.processor, "num_images", 1))

    def prepare(self, obs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"image": uint8 [B, H, W, 3] (or [B, V, H, W, 3] for V views, or per sample a list of V pictures of any
        sizes), "instruction": [B] str[, "state": [B, P]]}`` -> processor outputs on the policy's device, left-padded,
        every tensor batch-first."""
        from PIL import Image

        views = _views(obs["image"])
        instructions = [str(s) for s in obs["instruction"]]
        if any(len(v) != self.num_images for v in views):
            raise ValueError(f"the observations have {sorted({len(v) for v in views})} picture(s) per sample, this "
                             f"model reads {self.num_images} (model.num_images; several views: OpenVLA-OFT only)")
        texts = [self.prompt_text(s) for s in instructions]
        if self.arch.native:  # OpenVLA's processor: several views per sample, OFT's robot state
            pil_views = [[Image.fromarray(np.asarray(view)) for view in sample] for sample in views]
            state = obs.get("state") if self.proprio_projector is not None else None
            enc = self.processor(images=pil_views, text=texts, return_tensors="pt", padding=True, proprio=state)
        else:
            pil = [Image.fromarray(np.asarray(sample[0])) for sample in views]
            enc = self.processor(images=pil, text=texts, return_tensors="pt", padding=True)
        out = {k: v for k, v in enc.items() if isinstance(v, torch.Tensor) and k != "labels"}
        if self.arch.flat_pixels:  # [B * P, dim] -> [B, P, dim] so minibatches can index it
            out["pixel_values"] = out["pixel_values"].reshape(len(pil), -1, out["pixel_values"].shape[-1])
        if "attention_mask" not in out:
            out["attention_mask"] = torch.ones_like(out["input_ids"])
        return {k: v.to(self.device) for k, v in out.items()}

    def collate(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Concatenate prepared inputs; sequence tensors are left-padded to the longest."""
        length = max(b["input_ids"].shape[1] for b in batches)
        out: dict[str, torch.Tensor] = {}
        for key in batches[0]:
            parts = []
            for b in batches:
                v = b[key]
                if key in _SEQ_KEYS and v.shape[1] < length:
                    fill = self.pad_token_id if key == "input_ids" else 0
                    v = torch.cat([v.new_full((v.shape[0], length - v.shape[1]), fill), v], dim=1)
                parts.append(v)
            out[key] = torch.cat(parts, dim=0)
        return out

    def _trim(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Drop left-padding columns no row of this (mini)batch uses."""
        used = inputs["attention_mask"].any(0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start == 0:
            return inputs
        return {k: (v[:, start:] if k in _SEQ_KEYS else v) for k, v in inputs.items()}

    def _positions(self, input_ids: torch.Tensor, mask: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Position ids from the mask: ``[B, L]``, or ``[3, B, L]`` M-RoPE positions for Qwen-VL."""
        if self.arch.mrope:
            mm = inputs["mm_token_type_ids"]
            if mm.shape[1] < input_ids.shape[1]:  # appended action tokens are text
                mm = torch.cat([mm, mm.new_zeros(mm.shape[0], input_ids.shape[1] - mm.shape[1])], dim=1)
            pos, _ = self.base_model.model.get_rope_index(
                input_ids, mm_token_type_ids=mm, image_grid_thw=inputs["image_grid_thw"], attention_mask=mask)
            return pos
        pos = mask.long().cumsum(-1) - 1 + self.arch.position_offset
        return pos.clamp_min(self.arch.position_offset)

    def _forward_kwargs(self, inputs: dict[str, torch.Tensor], extra_len: int) -> dict[str, Any]:
        """The model kwargs of a full (no cache) forward over the prompt + ``extra_len`` generated tokens."""
        kw: dict[str, Any] = {}
        for key, value in inputs.items():
            if key in _SEQ_KEYS:
                continue
            if key == "pixel_values" and self.arch.flat_pixels:
                value = value.reshape(-1, value.shape[-1])
            if key == "proprio":  # OFT: the normalised robot state, projected into one token's embedding
                kw["proprio_embeds"] = self.proprio_projector(value.to(self.base_model.dtype))
                continue
            kw[key] = value.to(self.base_model.dtype) if value.is_floating_point() else value
        B = inputs["input_ids"].shape[0]
        if self.arch.token_type_ids:
            tt = inputs.get("token_type_ids")
            if tt is None:
                tt = torch.zeros_like(inputs["input_ids"])
            kw["token_type_ids"] = torch.cat([tt, tt.new_ones(B, extra_len)], dim=1)
        if self.arch.mrope:
            mm = inputs["mm_token_type_ids"]
            kw["mm_token_type_ids"] = torch.cat([mm, mm.new_zeros(B, extra_len)], dim=1)
        return kw

    def _decode(self, **kw: Any) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """The decoder body (no output layer): ``(last hidden [B, L, H], feature-layer hidden, cache)``.

        The output layer is applied by :meth:`_bin_logits` to the few positions that predict action
        tokens and, when it is a plain linear map, to the K bin rows only — a full-vocabulary
        projection (32k+ rows) of every prompt position would cost more than the bins' softmax needs."""
        want_all = self.feature_layer != -1
        out = self.base_model.model(output_hidden_states=want_all, return_dict=True, **kw)
        last = out.last_hidden_state
        return last, (out.hidden_states[self.feature_layer] if want_all else last), _cache_of(out)

    def _bin_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of the K bin tokens ``[..., K]`` (float32) from final hidden states ``[..., H]``."""
        head = self.base_model.get_output_embeddings()
        if type(head) is nn.Linear:
            logits = F.linear(hidden, head.weight.index_select(0, self.bin_token_ids),
                              None if head.bias is None else head.bias.index_select(0, self.bin_token_ids))
        else:  # an adapted output layer (e.g. trainable <act_k> rows): run it, keep the bins
            logits = head(hidden.contiguous()).index_select(-1, self.bin_token_ids)
        cap = getattr(self.base_model.config.get_text_config(), "final_logit_softcapping", None)
        if cap:  # Gemma2 (PaliGemma2) squashes its logits; the restricted softmax must see the same ones
            logits = torch.tanh(logits / cap) * cap
        return logits.float() / self.temperature

    # -- the protocol -------------------------------------------------------------------------
    def encode(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The state feature ``[B, H]`` alone (value bootstrap): the feature ``act`` and ``evaluate`` give, so the
        value head reads the same thing at the bootstrap as at the rollout's steps."""
        if not self.autoregressive:  # read inside the bidirectional forward over prompt + slots, as act reads it
            return self._parallel_logits(inputs)[1]
        inputs = self._trim(inputs)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        _, feats, _ = self._decode(input_ids=ids, attention_mask=mask, position_ids=self._positions(ids, mask, inputs),
                                   use_cache=False, **self._forward_kwargs(inputs, 0))
        return feats[:, -1].float()

    def act(self, inputs: dict[str, torch.Tensor], *, deterministic: bool = False,
            temperature: float = 1.0) -> ActOutput:
        """D bin tokens (greedy, or sampled at ``temperature``); log-probs are of the policy's own restricted softmax
        (at its ``self.temperature``), whatever ``temperature`` the sampling used."""
        if not self.autoregressive:
            logits, features, slot_hidden = self._parallel_logits(inputs)  # [B, D, K]
            # every token drawn on its own: they are independent given the observation
            actions = sample_bins(logits, deterministic, temperature)
            logp, _, probs = categorical_stats(logits, actions)
            # OFT's L1 head: normalised continuous actions [B, H, A] from the same forward (what the env executes)
            continuous = self.action_head(slot_hidden).float() if self.action_head is not None else None
            return ActOutput(actions, logp, features, probs, continuous)
        inputs = self._trim(inputs)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        B = ids.shape[0]
        pos = self._positions(ids, mask, inputs)
        last, feats, cache = self._decode(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                                          **self._forward_kwargs(inputs, 0))
        features = feats[:, -1].float()
        next_pos = pos[..., -1:] + 1
        step_kw: dict[str, Any] = {}
        if self.arch.token_type_ids:
            step_kw["token_type_ids"] = torch.ones(B, 1, dtype=torch.long, device=ids.device)
        if self.arch.mrope:
            step_kw["mm_token_type_ids"] = torch.zeros(B, 1, dtype=torch.long, device=ids.device)
        logits_all, actions = [], []
        for i in range(self.action_dims):
            logits = self._bin_logits(last[:, -1])  # [B, K]
            a_i = sample_bins(logits, deterministic, temperature)
            logits_all.append(logits)
            actions.append(a_i)
            if i == self.action_dims - 1:
                break
            mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
            last, _, cache = self._decode(input_ids=self.bin_token_ids[a_i][:, None], attention_mask=mask,
                                          position_ids=next_pos, use_cache=True, **{cache_keyword(): cache}, **step_kw)
            next_pos = next_pos + 1
        actions_t = torch.stack(actions, dim=1)
        logp, _, probs = categorical_stats(torch.stack(logits_all, dim=1), actions_t)
        return ActOutput(actions_t, logp, features, probs)

    def evaluate(self, inputs: dict[str, torch.Tensor], actions: torch.Tensor) -> EvalOutput:
        """One teacher-forced forward over prompt + the D action tokens (parallel decoding: the same forward as
        ``act``, which the actions do not enter)."""
        if not self.autoregressive:
            logits, features, _ = self._parallel_logits(inputs)
            logp, entropy, probs = categorical_stats(logits, actions)
            return EvalOutput(logp, entropy, features, probs)
        inputs = self._trim(inputs)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        B, L, D = ids.shape[0], ids.shape[1], self.action_dims
        full_ids = torch.cat([ids, self.bin_token_ids[actions.long()]], dim=1)
        full_mask = torch.cat([mask, mask.new_ones(B, D)], dim=1)
        last, feats, _ = self._decode(input_ids=full_ids, attention_mask=full_mask,
                                      position_ids=self._positions(full_ids, full_mask, inputs), use_cache=False,
                                      **self._forward_kwargs(inputs, D))
        logits = self._bin_logits(last[:, L - 1:L - 1 + D])  # positions L-1 .. L+D-2 predict the D tokens
        logp, entropy, probs = categorical_stats(logits, actions)
        return EvalOutput(logp, entropy, feats[:, L - 1].float(), probs)

    def _parallel_logits(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(bin logits [B, D, K], state feature [B, H], slot hidden states [B, D, H])`` of one bidirectional
        forward over prompt + D zeroed slots + stop token (parallel_decoding.py); the feature is the last prompt
        token's hidden state; the slot hidden states (the positions the logits are read at) feed OFT's L1 head."""
        inputs = self._trim(inputs)
        layout = ParallelLayout.build(inputs["input_ids"], inputs["attention_mask"], self.action_dims,
                                      slot_id=self._slot_id, stop_id=self.stop_token_id)
        model = self.base_model
        mask = bidirectional_mask(model.config.get_text_config(), layout.attention_mask, model.dtype)
        positions = self._positions(layout.input_ids, layout.attention_mask, inputs)
        with zeroed_slots(model.get_input_embeddings(), layout.slots):
            last, feats, _ = self._decode(input_ids=layout.input_ids, attention_mask=mask, position_ids=positions,
                                          use_cache=False, **self._forward_kwargs(inputs, self.action_dims + 1))
        slot_hidden = last[:, layout.logit_positions]
        return self._bin_logits(slot_hidden), feats[:, layout.prompt_length - 1].float(), slot_hidden

    # -- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Adapter (or full model) + processor + action tokenizer: what a checkpoint holds of the policy."""
        directory = Path(directory)
        if self.arch.native and not hasattr(self.model, "peft_config"):  # a fully fine-tuned OpenVLA
            from .openvla.weights import save_openvla

            save_openvla(self.model, directory)
        else:
            self.model.save_pretrained(str(directory))
        self.processor.save_pretrained(str(directory))
        self.action_tokenizer.save(directory)

    def lora_module_names(self) -> list[str]:
        """Names (relative to the transformers model) of the modules carrying a LoRA adapter."""
        names = set()
        for name, _ in self.base_model.named_modules():
            m = re.match(r"^(.*)\.lora_A$", name)
            if m:
                names.add(m.group(1))
        return sorted(names)


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _views(images: Any) -> list[list[np.ndarray]]:
    """Per sample, its pictures: from ``[B, H, W, 3]``, ``[B, V, H, W, 3]`` or a list of per-sample picture lists."""
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], (list, tuple)):
        return [list(sample) for sample in images]
    array = np.asarray(images)
    if array.ndim == 4:
        array = array[:, None]
    return [list(sample) for sample in array]
