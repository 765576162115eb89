"""Tiny, random-weight but *real* vision-language models, built offline from their config classes.

Why: the VLA policy code must be exercised against the real Hugging Face architectures (their processors,
image-token expansion, KV caches, module names for LoRA) without network access and in seconds on a CPU.
Every model here is the class ``AutoModelForImageTextToText`` maps its config to, paired with the arch's
real processor class, so ``save_pretrained`` / ``from_pretrained`` go through the normal code paths.

Tokenizers do not exist on disk either, so one is trained in-process (a byte-level BPE on a fixed corpus of
robot instructions, hence deterministic) and padded with filler tokens so that the vocabulary has exactly
``vocab_size`` entries and the last 256 ids are fillers -- the ids an action tokenizer reuses as bins, as
OpenVLA reuses the last 256 Llama ids.

Each architecture is one entry of :data:`TINY_VLMS` (its tokens, default vocabulary and a builder of its
config + processor); adding an architecture is adding an entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Gemma2Config,
    GemmaConfig,
    Idefics3Config,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    LlamaConfig,
    LlavaConfig,
    LlavaProcessor,
    PaliGemmaConfig,
    PaliGemmaProcessor,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2VLImageProcessorPil,
    SiglipImageProcessorPil,
)
from transformers.processing_utils import ProcessorMixin

from ..policies.processors import Qwen2_5_VLImageOnlyProcessor
from .bin_rows import ordinal_rows

__all__ = [
    "HF_TINY_ARCHS",
    "NUM_ACTION_FILLERS",
    "TINY_ARCHS",
    "TINY_VLMS",
    "Sizes",
    "TinyArch",
    "build_tiny_vla",
    "build_tokenizer",
    "default_vocab_size",
    "ordinal_rows",
    "save_tiny_vla",
    "write_action_tokenizer",
]

#: Number of filler ids at the end of the vocabulary reserved for action bins.
NUM_ACTION_FILLERS = 256

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"

# PaliGemma's processor unconditionally calls ``tokenizer.add_tokens`` with these 1152 location /
# segmentation tokens. They must already be in the vocabulary (``add_tokens`` skips known tokens), or every
# processor construction -- including ``from_pretrained`` -- would grow the vocab past the model's.
_PALIGEMMA_EXTRA = tuple(f"<loc{i:0>4}>" for i in range(1024)) + tuple(f"<seg{i:0>3}>" for i in range(128))

# Idefics3 (SmolVLM) looks these up by name; missing ones would silently map to ``<unk>``.
_IDEFICS3_SPECIALS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>") + tuple(
    f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)
)

_CORPUS: tuple[str, ...] = (
    "In: What action should the robot take to pick up the red block?\nOut:",
    "In: What action should the robot take to move the arm to the goal?\nOut:",
    "In: What action should the robot take to push the blue cube to the left?\nOut:",
    "In: What action should the robot take to open the drawer?\nOut:",
    "In: What action should the robot take to close the door?\nOut:",
    "In: What action should the robot take to reach the green target?\nOut:",
    "pick up the red block",
    "move the arm to the goal",
    "put the yellow ball in the bowl",
    "turn on the faucet and press the button",
    "slide the plate to the right of the table",
    "place the object on top of the box",
    "grasp the handle, lift it up and put it down",
    "reach goal position x y z with the gripper open or closed",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 100 255 -1 0.5 1.0",
    "Answer briefly. What is in the image? A robot arm, a table, a cup.",
    "User: Assistant: <end_of_utterance> system user assistant",
)


@dataclass(frozen=True)
class Sizes:
    """The sizes every builder shares; the image geometry is shared so processor and model agree on the
    number of image tokens."""

    text_hidden: int
    text_layers: int
    vision_hidden: int
    vision_layers: int
    image_size: int
    patch_size: int
    vocab_size: int

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def _text_kwargs(tokenizer: PreTrainedTokenizerFast, s: Sizes) -> dict[str, Any]:
    """Shared decoder sizes: 2 heads of 32 dims, 1 KV head (GQA path exercised), ids tied to the tokenizer."""
    heads = 2
    return {
        "vocab_size": s.vocab_size,
        "hidden_size": s.text_hidden,
        "intermediate_size": 2 * s.text_hidden,
        "num_hidden_layers": s.text_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 1,
        "head_dim": s.text_hidden // heads,
        "max_position_embeddings": 512,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def _siglip_vision(s: Sizes) -> dict[str, Any]:
    """A SigLIP vision tower projecting to the decoder's width."""
    return {
        "model_type": "siglip_vision_model",
        "hidden_size": s.vision_hidden,
        "intermediate_size": 2 * s.vision_hidden,
        "num_hidden_layers": s.vision_layers,
        "num_attention_heads": 2,
        "image_size": s.image_size,
        "patch_size": s.patch_size,
        "projection_dim": s.text_hidden,
    }


def _siglip_size(s: Sizes) -> dict[str, int]:
    return {"height": s.image_size, "width": s.image_size}


# A builder: (tokenizer, sizes, id of the image token) -> (model config, processor).
Builder = Callable[[PreTrainedTokenizerFast, Sizes, int], tuple[PretrainedConfig, ProcessorMixin]]


def _paligemma(tokenizer: PreTrainedTokenizerFast, s: Sizes, image_id: int, *, gemma2: bool
               ) -> tuple[PretrainedConfig, ProcessorMixin]:
    text = _text_kwargs(tokenizer, s)
    text_cfg: Any
    if gemma2:
        text_cfg = Gemma2Config(**text, query_pre_attn_scalar=s.text_hidden // 2, sliding_window=64)
    else:
        text_cfg = GemmaConfig(**text)
    config = PaliGemmaConfig(
        vision_config=_siglip_vision(s),
        text_config=text_cfg,
        image_token_id=image_id,
        projection_dim=s.text_hidden,
        hidden_size=s.text_hidden,
        vocab_size=s.vocab_size,
    )
    # The processor reads ``image_seq_length`` off the image processor; it is saved with it.
    image_processor = SiglipImageProcessorPil(size=_siglip_size(s), image_seq_length=s.num_patches)
    return config, PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _qwen2_5_vl(tokenizer: PreTrainedTokenizerFast, s: Sizes, image_id: int
                ) -> tuple[PretrainedConfig, ProcessorMixin]:
    merge = 2
    text = _text_kwargs(tokenizer, s)
    config = Qwen2_5_VLConfig(
        text_config={
            **{k: v for k, v in text.items() if k != "head_dim"},
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
        },
        vision_config={
            "depth": s.vision_layers,
            "hidden_size": s.vision_hidden,
            "intermediate_size": 2 * s.vision_hidden,
            "num_heads": 2,
            "patch_size": s.patch_size,
            "spatial_merge_size": merge,
            "temporal_patch_size": 2,
            "window_size": s.patch_size * merge * 2,
            "out_hidden_size": s.text_hidden,
            "fullatt_block_indexes": [s.vision_layers - 1],
        },
        image_token_id=image_id,
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    )
    pixels = s.image_size * s.image_size
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=s.patch_size,
        merge_size=merge,
        temporal_patch_size=2,
        min_pixels=pixels,
        max_pixels=pixels,
        size={"shortest_edge": pixels, "longest_edge": pixels},
    )
    return config, Qwen2_5_VLImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _smolvlm(tokenizer: PreTrainedTokenizerFast, s: Sizes, image_id: int) -> tuple[PretrainedConfig, ProcessorMixin]:
    scale = 2
    config = Idefics3Config(
        vision_config={k: v for k, v in _siglip_vision(s).items() if k not in ("model_type", "projection_dim")},
        text_config=LlamaConfig(**_text_kwargs(tokenizer, s)),
        image_token_id=image_id,
        scale_factor=scale,
    )
    # One global image per frame (no tiling): few image tokens, fixed count.
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": s.image_size},
        max_image_size={"longest_edge": s.image_size},
    )
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=s.num_patches // scale**2
    )
    return config, processor


def _llava(tokenizer: PreTrainedTokenizerFast, s: Sizes, image_id: int) -> tuple[PretrainedConfig, ProcessorMixin]:
    config = LlavaConfig(
        vision_config=_siglip_vision(s),
        text_config=LlamaConfig(**_text_kwargs(tokenizer, s)),
        image_token_id=image_id,
        # SigLIP has no CLS token: keep every patch, and tell the processor there is no extra one.
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    processor = LlavaProcessor(
        image_processor=SiglipImageProcessorPil(size=_siglip_size(s)),
        tokenizer=tokenizer,
        patch_size=s.patch_size,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
    )
    return config, processor


@dataclass(frozen=True)
class TinyArch:
    """One architecture the tiny builder knows."""

    build: Builder
    """(tokenizer, sizes, image token id) -> (model config, processor)."""
    specials: tuple[str, ...]
    """Special tokens the processor or config look up by name (after ``<pad> <bos> <eos> <unk>``)."""
    image_token: str = "<image>"
    """The token the model config's ``image_token_id`` points at."""
    extra_tokens: tuple[str, ...] = ()
    """Plain tokens the processor adds when it is built; they must already be in the vocabulary."""
    vocab_size: int = 1024
    """Default vocabulary: the smallest round size that fits the specials, the extras and 256 bins."""


TINY_VLMS: dict[str, TinyArch] = {
    "paligemma": TinyArch(partial(_paligemma, gemma2=False), ("<image>",), extra_tokens=_PALIGEMMA_EXTRA,
                          vocab_size=2048),
    "paligemma2": TinyArch(partial(_paligemma, gemma2=True), ("<image>",), extra_tokens=_PALIGEMMA_EXTRA,
                           vocab_size=2048),
    "qwen2_5_vl": TinyArch(_qwen2_5_vl, ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
                           image_token="<|image_pad|>"),
    "smolvlm": TinyArch(_smolvlm, _IDEFICS3_SPECIALS),
    "llava": TinyArch(_llava, ("<image>",)),
}

# the architectures built from transformers' classes here; OpenVLA's released layout is tiny_openvla.py's
HF_TINY_ARCHS: tuple[str, ...] = tuple(TINY_VLMS)
TINY_ARCHS: tuple[str, ...] = (*HF_TINY_ARCHS, "openvla")


def _spec(arch: str) -> TinyArch:
    if arch not in TINY_VLMS:
        raise ValueError(f"unsupported arch {arch!r}; choose one of {', '.join(HF_TINY_ARCHS)}")
    return TINY_VLMS[arch]


def default_vocab_size(arch: str) -> int:
    """Smallest round vocabulary that fits the arch: PaliGemma needs room for its 1152 loc/seg tokens."""
    return _spec(arch).vocab_size


def build_tokenizer(vocab_size: int | None = None, arch: str = "llava") -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE whose ``len()`` is exactly ``vocab_size``.

    Layout: ``<pad> <bos> <eos> <unk>``, the arch's image/special tokens, the 256 byte symbols, learned
    merges, (PaliGemma: the 1152 loc/seg tokens), then ``<unused_0> ...`` fillers up to ``vocab_size``; at
    least the last :data:`NUM_ACTION_FILLERS` ids are fillers. Left padding is set because batched decoding
    needs each prompt's last token at the end of the row; it is saved in the tokenizer config.
    """
    spec = _spec(arch)
    if vocab_size is None:
        vocab_size = spec.vocab_size
    specials = [PAD, BOS, EOS, UNK, *spec.specials]
    extra = spec.extra_tokens
    bpe_budget = vocab_size - NUM_ACTION_FILLERS - len(extra)
    min_needed = len(specials) + 256 + 16
    if bpe_budget < min_needed:
        raise ValueError(
            f"vocab_size={vocab_size} too small for {arch}: need at least "
            f"{min_needed + len(extra) + NUM_ACTION_FILLERS}"
        )

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_budget,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_CORPUS), trainer=trainer)
    if extra:
        tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in extra])
    n_fill = vocab_size - tok.get_vocab_size(with_added_tokens=True)
    tok.add_tokens([AddedToken(f"<unused_{i}>", normalized=False, special=False) for i in range(n_fill)])

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
    )
    if len(fast) != vocab_size:  # pragma: no cover - guards the layout invariant
        raise RuntimeError(f"tokenizer has {len(fast)} tokens, wanted {vocab_size}")
    return fast


def build_tiny_vla(
    arch: str,
    seed: int = 0,
    *,
    text_hidden: int = 64,
    text_layers: int = 2,
    vision_hidden: int = 64,
    vision_layers: int = 2,
    vocab_size: int | None = None,
    image_size: int = 32,
    patch_size: int = 8,
    output_std: float = 0.25,
    action_row_cycles: float = 16.0,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Build ``(model, processor)`` for ``arch`` with seeded random weights (float32, eval mode).

    ``vocab_size`` defaults to :func:`default_vocab_size` (1024; 2048 for PaliGemma, whose processor
    insists on 1152 extra tokens). ``len(processor.tokenizer) == model vocab == vocab_size``.

    ``output_std``: the output-embedding rows are redrawn with this std. A pretrained model's output layer
    separates tokens by several nats; with the usual 0.02 init (logit std ~0.16 after the final norm) and
    the output layer frozen under LoRA, no token could ever get more than a few percent of the mass, so
    neither SFT nor PPO could make a tiny model decisive.

    ``action_row_cycles``: the input- and output-embedding rows of the last :data:`NUM_ACTION_FILLERS` ids
    (the action bins) are made smooth in the bin index, with at most this many periods across the bins
    (:func:`ordinal_rows`; 0 = i.i.d. random rows like every other token). A VLA pretrained on robot data
    treats bin k and k+1 as nearly the same action; a random model treats them as unrelated words, so its
    sampled actions jump to far-away bins (measured on a cloned MetaWorld policy: 70% of the mass of a
    dim more than 16 bins from the mode at T=1) and neither cloning nor RL can share what one bin
    learns with its neighbours — under LoRA the output rows stay frozen, so this prior cannot be learned.
    """
    spec = _spec(arch)
    if vocab_size is None:
        vocab_size = spec.vocab_size
    tokenizer = build_tokenizer(vocab_size, arch)
    sizes = Sizes(text_hidden=text_hidden, text_layers=text_layers, vision_hidden=vision_hidden,
                  vision_layers=vision_layers, image_size=image_size, patch_size=patch_size, vocab_size=vocab_size)
    config, processor = spec.build(tokenizer, sizes, tokenizer.convert_tokens_to_ids(spec.image_token))
    if len(processor.tokenizer) != vocab_size:  # pragma: no cover - a processor added tokens
        raise RuntimeError(
            f"{arch} processor grew the vocab to {len(processor.tokenizer)} (wanted {vocab_size})"
        )
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        out_rows = model.get_output_embeddings().weight
        out_rows.normal_(0.0, output_std)
        if action_row_cycles > 0:
            in_rows = model.get_input_embeddings().weight
            bins = slice(vocab_size - NUM_ACTION_FILLERS, vocab_size)
            in_rows[bins] = ordinal_rows(NUM_ACTION_FILLERS, in_rows.shape[1], float(in_rows.std()),
                                         action_row_cycles)
            out_rows[bins] = ordinal_rows(NUM_ACTION_FILLERS, out_rows.shape[1], output_std, action_row_cycles)
    model.eval()
    return model, processor


def save_tiny_vla(arch: str, out_dir: str | Path, seed: int = 0, **kw: Any) -> Path:
    """Write a tiny VLA where ``from_pretrained`` (model and ``AutoProcessor``) can load it offline; ``openvla``
    writes the released OpenVLA layout instead (tiny_openvla.py)."""
    if arch == "openvla":
        from .tiny_openvla import save_tiny_openvla

        return save_tiny_openvla(out_dir, seed, **kw)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = build_tiny_vla(arch, seed, **kw)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def write_action_tokenizer(directory: str | Path, action_dims: int = 7, num_bins: int = NUM_ACTION_FILLERS,
                           bound: float = 1.0, *, low: list[float] | None = None,
                           high: list[float] | None = None) -> Path:
    """Add ``action_tokenizer.json`` (bins = the last ``num_bins`` vocabulary ids) to a saved tiny VLA,
    so a recipe can name the dir as ``model.name_or_path`` and get a complete VLA. Bounds: ``low`` /
    ``high`` per dim (an env's action bounds), else ``[-bound, bound]``."""
    from ..policies.action_tokenizer import ActionTokenizer

    directory = Path(directory)
    tokenizer = AutoProcessor.from_pretrained(directory).tokenizer
    at = ActionTokenizer.last_k(len(tokenizer), action_dims, num_bins,
                                list(low) if low is not None else [-bound] * action_dims,
                                list(high) if high is not None else [bound] * action_dims,
                                reserved_ids=tokenizer.all_special_ids)
    return at.save(directory)
