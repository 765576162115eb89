"""Tiny OpenVLA-format checkpoints, written offline in the released layout (tests, demo runs, the parity fixture).

The files are what ``huggingface-cli download openvla/openvla-7b`` gives, at tiny sizes: ``config.json``
(``model_type: openvla`` with the released ``auto_map``, ``timm_model_ids`` of tiny ViTs in the grammar of
policies/openvla/vit.py, realistic ``norm_stats``, a ``text_config`` diff against LlamaConfig), bf16
``model.safetensors`` (or shards + index), ``preprocessor_config.json`` in the released format and the
tokenizer files. The Llama-2 tokenizer cannot be downloaded here, so a synthetic one is built: a
Llama-style BPE with byte fallback whose 32000 ids keep Llama-2's layout where it matters — ``<unk>``
``<s>`` ``</s>`` = 0 1 2, the byte pieces at 3..258, ``▁`` at 29871 (OpenVLA appends that id), the last 256
ids (the action tokens) fillers no text produces — and ``<PAD>`` = 32000.

Weights are seeded and sharpened so a tiny model behaves like a trained one in the ways the tests rely on:
its actions depend on the picture (the openvla#346 guard), bin tokens k and k+1 have nearby embeddings
(:func:`~vla_structppo.testing.bin_rows.ordinal_rows`, the prior a pretrained VLA has), and a full-vocabulary
greedy step lands on an action token (so greedy over all ids and over the 256 bins agree, as they do for
the released models).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from ..policies.openvla.modeling import OpenVLAConfig, OpenVLAForActionPrediction
from ..policies.openvla.vit import unused_shapes, vit_spec
from ..policies.openvla.weights import save_openvla
from .bin_rows import ordinal_rows

__all__ = ["DEFAULT_NORM_STATS", "build_llama_tokenizer", "save_tiny_openvla"]

VOCAB = 32000  # Llama-2's real vocabulary; the model's rows are padded to 32064
SPACE_ID = 29871
ACTION_IDS = range(VOCAB - 256, VOCAB)
_CORPUS = (
    "In: What action should the robot take to pick up the red block?\nOut:",
    "In: What action should the robot take to move the point to the goal?\nOut:",
    "In: What action should the robot take to open the drawer?\nOut:",
    "In: What action should the robot take to put the black bowl on the plate?\nOut:",
    "move the point to the goal in 3 steps", "push the cube to the goal", "stack the red cube on the green cube",
    "pick up the alphabet soup and place it in the basket", "turn on the stove and put the moka pot on it",
)
# plausible robot statistics (BridgeData-like end-effector deltas; the gripper dim is not normalised)
DEFAULT_NORM_STATS = {
    "bridge_orig": {
        "action": {"mean": [0.0002, 0.0001, -0.0001, 0.0, -0.0001, 0.0002, 0.5764],
                   "std": [0.0097, 0.0136, 0.0128, 0.0287, 0.0306, 0.0764, 0.4974],
                   "max": [0.4155, 0.6026, 0.4379, 0.7955, 0.7860, 0.9999, 1.0],
                   "min": [-0.4007, -0.5298, -0.4079, -0.7894, -0.7863, -0.9999, 0.0],
                   "q01": [-0.0294, -0.0417, -0.0260, -0.0810, -0.0924, -0.2117, 0.0],
                   "q99": [0.0286, 0.0409, 0.0404, 0.0812, 0.0778, 0.2045, 1.0],
                   "mask": [True, True, True, True, True, True, False]},
        "proprio": {k: [0.0] * 7 for k in ("mean", "std", "max", "min", "q01", "q99")},
        "num_transitions": 2135463, "num_trajectories": 60064},
    # LIBERO-like: larger deltas, the gripper already in {-1, 1}
    "libero_spatial_no_noops": {
        "action": {"mean": [0.153, 0.137, -0.155, -0.005, -0.011, -0.002, -0.057],
                   "std": [0.412, 0.349, 0.501, 0.038, 0.072, 0.053, 0.998],
                   "max": [0.938, 0.938, 0.938, 0.197, 0.337, 0.375, 1.0],
                   "min": [-0.938, -0.938, -0.938, -0.197, -0.305, -0.321, -1.0],
                   "q01": [-0.746, -0.665, -0.938, -0.113, -0.189, -0.171, -1.0],
                   "q99": [0.938, 0.873, 0.938, 0.107, 0.185, 0.149, 1.0],
                   "mask": [True, True, True, True, True, True, False]},
        "proprio": {k: [0.0] * 8 for k in ("mean", "std", "max", "min", "q01", "q99")},
        "num_transitions": 52970, "num_trajectories": 432},
}
RELEASED_PREPROCESSOR = {
    "auto_map": {"AutoImageProcessor": "processing_prismatic.PrismaticImageProcessor",
                 "AutoProcessor": "processing_prismatic.PrismaticProcessor"},
    "image_processor_type": "PrismaticImageProcessor", "processor_class": "PrismaticProcessor",
    "image_resize_strategy": "resize-naive", "interpolations": ["bicubic", "bicubic"],
    "means": [[0.485, 0.456, 0.406], [0.5, 0.5, 0.5]], "stds": [[0.229, 0.224, 0.225], [0.5, 0.5, 0.5]],
    "tvf_do_letterbox": False, "tvf_letterbox_fill": None, "use_fused_vision_backbone": True,
    "tvf_normalize_params": [{"inplace": False, "mean": [0.484375, 0.455078125, 0.40625],
                              "std": [0.228515625, 0.2236328125, 0.224609375]},
                             {"inplace": False, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}],
}


def build_llama_tokenizer(out_dir: str | Path) -> None:
    """Write a synthetic Llama-2-layout tokenizer (module doc) that ``LlamaTokenizerFast`` loads."""
    from transformers import LlamaTokenizer

    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    # merges are learned within words (as SentencePiece's pieces are): "▁the", "▁robot", never whole phrases
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    trainer_tok.train_from_iterator(list(_CORPUS), trainer=trainer)
    learned = json.loads(trainer_tok.to_str())["model"]
    vocab: dict[str, int] = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    free = (i for i in range(259, VOCAB) if i != SPACE_ID)
    vocab["▁"] = SPACE_ID
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = next(free)
    for i in free:  # fillers up to 32000: never produced (no merge builds them), e.g. the action tokens
        vocab[f"<filler_{i}>"] = i
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)
    tok.add_special_tokens({"pad_token": "<PAD>"})
    assert len(tok) == VOCAB + 1 and tok.pad_token_id == VOCAB and tok.convert_ids_to_tokens(SPACE_ID) == "▁"
    tok.save_pretrained(str(out_dir))
    # merges as "a b" strings, as the released Llama-2 tokenizer.json has them: every tokenizers version reads
    # that form (the pair form newer versions write is unreadable to the 0.19 the original code pins)
    path = Path(out_dir) / "tokenizer.json"
    data = json.loads(path.read_text())
    data["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def _sharpen(model: OpenVLAForActionPrediction, seed: int) -> None:
    """Random weights with the properties a trained model has that the tests rely on (module doc)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "embed_tokens" in name or "lm_head" in name:  # small rows (as initialised); bins set below
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            elif p.ndim >= 2:  # linear / conv: unit-variance outputs, so depth does not wash the picture out
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
            elif name.endswith("scale_factor"):  # DINO LayerScale (1e-5 would make every block a no-op)
                p.copy_(0.05 + 0.45 * torch.rand(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
        torch.manual_seed(seed)
        emb, out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        rows = slice(ACTION_IDS.start, ACTION_IDS.stop)
        # the bin rows: smooth in the bin index; the output rows at the scale the other tiny VLAs use (0.25), well
        # above the text rows (0.02), so a step's full-vocabulary argmax is an action token, yet the restricted
        # softmax keeps the entropy PPO needs to explore
        emb[rows] = ordinal_rows(256, emb.shape[1], 0.5, 16.0)
        out[rows] = ordinal_rows(256, out.shape[1], 0.25, 16.0)


def save_tiny_openvla(out_dir: str | Path, seed: int = 0, *, llm_hidden: int = 64, llm_layers: int = 2,
                      llm_heads: int = 2, image_size: int = 224,
                      vit_ids: tuple[str, str] = ("vit_dinov2reg_w32_d3_h2_p14", "vit_siglip_w32_d3_h2_p14_m64"),
                      norm_stats: dict | None = None, max_shard_bytes: int = 4 << 30, **_: Any) -> Path:
    """Write a tiny OpenVLA checkpoint in the released layout (module doc); returns the dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = {"model_type": "llama", "hidden_size": llm_hidden, "intermediate_size": 2 * llm_hidden,
            "num_hidden_layers": llm_layers, "num_attention_heads": llm_heads, "num_key_value_heads": llm_heads,
            "vocab_size": VOCAB + 64, "pad_token_id": VOCAB, "torch_dtype": "bfloat16"}
    config = OpenVLAConfig(text_config=text, timm_model_ids=list(vit_ids), image_sizes=[image_size, image_size],
                           norm_stats=norm_stats or DEFAULT_NORM_STATS, pad_token_id=VOCAB)
    model = OpenVLAForActionPrediction(config)
    _sharpen(model, seed)
    g = torch.Generator().manual_seed(seed + 1)  # the released files hold the tensors the forward never reads
    model.unused_tensors = {f"vision_backbone.{name}.{key}": 0.02 * torch.randn(shape, generator=g)
                            for name, timm_id in (("featurizer", vit_ids[0]), ("fused_featurizer", vit_ids[1]))
                            for key, shape in unused_shapes(vit_spec(timm_id)).items()}
    save_openvla(model.to(torch.bfloat16), out, max_shard_bytes=max_shard_bytes)
    released = {  # the fields of the released config.json this port does not read, as they are there
        "architectures": ["OpenVLAForActionPrediction"], "arch_specifier": "no-align+fused-gelu-mlp",
        "auto_map": {"AutoConfig": "configuration_prismatic.OpenVLAConfig",
                     "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction"},
        "hf_llm_id": "meta-llama/Llama-2-7b-hf", "image_resize_strategy": "resize-naive", "llm_backbone_id":
        "llama2-7b-pure", "llm_max_length": 2048, "output_projector_states": False, "torch_dtype": "bfloat16",
        "use_fused_vision_backbone": True, "vision_backbone_id": "dinosiglip-vit-so-224px", "model_type": "openvla",
        "transformers_version": "4.40.1",
    }
    cfg = {**json.loads((out / "config.json").read_text()), **released}
    cfg.pop("image_token_id", None)  # the placeholder id is this port's; the released file has none
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    size = [[3, image_size, image_size]] * 2
    pre = {**RELEASED_PREPROCESSOR, "input_sizes": size,
           "tvf_crop_params": [{"output_size": [image_size, image_size]}] * 2,
           "tvf_resize_params": [{"antialias": True, "interpolation": 3, "max_size": None,
                                  "size": [image_size, image_size]}] * 2}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2, sort_keys=True) + "\n")
    build_llama_tokenizer(out)
    return out
