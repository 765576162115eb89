"""The tiny real VLMs build, save and reload offline through the stock ``from_pretrained`` paths."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from vla_structppo.testing.bin_rows import ordinal_rows
from vla_structppo.testing.tiny_vlms import (
    HF_TINY_ARCHS,
    NUM_ACTION_FILLERS,
    build_tiny_vla,
    build_tokenizer,
    default_vocab_size,
    save_tiny_vla,
)

# PaliGemma's processor builds its fine-tuning labels with a numpy-2-deprecated call; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# Where each processor wants the image placeholder (PaliGemma's inserts <bos> after it and appends "\n").
PROMPT = {
    "paligemma": "<image>{}",
    "paligemma2": "<image>{}",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>{}",
    "smolvlm": "<image>{}",
    "llava": "<image>{}",
}


def _inputs(processor, arch):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]
    texts = [
        PROMPT[arch].format("In: What action should the robot take to pick up the red block?\nOut:"),
        PROMPT[arch].format("In: move?\nOut:"),
    ]
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    inputs.pop("labels", None)  # PaliGemma adds labels for fine-tuning; not a forward input here
    return inputs


@pytest.mark.parametrize("arch", HF_TINY_ARCHS)
def test_build_save_reload(arch, tmp_path):
    model, processor = build_tiny_vla(arch, seed=0)
    vocab = default_vocab_size(arch)
    out = save_tiny_vla(arch, tmp_path / arch, seed=0)

    model2 = AutoModelForImageTextToText.from_pretrained(out).eval()
    processor2 = AutoProcessor.from_pretrained(out)
    assert type(model2) is type(model)
    assert type(processor2) is type(processor)

    for tok in (processor.tokenizer, processor2.tokenizer):
        assert len(tok) == vocab
        assert tok.padding_side == "left"
        tail = tok.convert_ids_to_tokens(list(range(vocab - NUM_ACTION_FILLERS, vocab)))
        assert all(t.startswith("<unused_") for t in tail)
        assert tok.decode([vocab - 1]) == tail[-1]

    inputs = _inputs(processor, arch)
    inputs2 = _inputs(processor2, arch)
    assert inputs.keys() == inputs2.keys()
    for k in inputs:
        assert torch.equal(inputs[k], inputs2[k]), k

    mask = inputs["attention_mask"]
    assert mask[1, 0] == 0 and mask[0, 0] == 1 and bool(mask[:, -1].all())  # left padding, rows differ
    assert int(inputs["input_ids"][1, 0]) == processor.tokenizer.pad_token_id

    with torch.no_grad():
        logits = model(**inputs).logits
        logits2 = model2(**inputs2).logits
    assert logits.shape == (2, inputs["input_ids"].shape[1], vocab)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, logits2, atol=1e-5, rtol=0)


def test_deterministic_and_seeded():
    a, _ = build_tiny_vla("llava", seed=0)
    b, _ = build_tiny_vla("llava", seed=0)
    c, _ = build_tiny_vla("llava", seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert build_tokenizer(1024, "llava").get_vocab() == build_tokenizer(1024, "llava").get_vocab()


def test_unsupported_arch_and_small_vocab():
    with pytest.raises(ValueError, match="paligemma.*llava"):
        build_tiny_vla("gpt2")
    with pytest.raises(ValueError, match="too small"):
        build_tokenizer(1024, "paligemma")


def _cos(rows: torch.Tensor, i: int, j: int) -> float:
    return float(torch.nn.functional.cosine_similarity(rows[i], rows[j], dim=0))


def test_ordinal_rows_are_smooth_in_the_bin_index():
    torch.manual_seed(0)
    rows = ordinal_rows(256, 64, 0.25, max_cycles=16.0)
    assert rows.shape == (256, 64) and abs(float(rows.std()) - 0.25) < 1e-4
    adjacent = [_cos(rows, k, k + 1) for k in range(255)]
    far = [abs(_cos(rows, k, (k + 128) % 256)) for k in range(256)]
    assert min(adjacent) > 0.9  # bin k and k+1: nearly the same row
    assert np.mean(far) < 0.25  # half the range apart: nearly unrelated


@pytest.mark.parametrize("arch", ["llava", "paligemma"])
def test_action_bin_rows_are_ordinal_and_other_rows_random(arch):
    model, _ = build_tiny_vla(arch, seed=0)
    vocab = default_vocab_size(arch)
    first_bin = vocab - NUM_ACTION_FILLERS
    for rows in (model.get_input_embeddings().weight.detach(), model.get_output_embeddings().weight.detach()):
        assert min(_cos(rows, k, k + 1) for k in range(first_bin, vocab - 1)) > 0.9
        # the rest of the vocabulary keeps i.i.d. rows: neighbouring ids are unrelated
        assert np.mean([abs(_cos(rows, k, k + 1)) for k in range(first_bin - 64, first_bin - 1)]) < 0.3
    plain, _ = build_tiny_vla(arch, seed=0, action_row_cycles=0)
    rows = plain.get_output_embeddings().weight.detach()
    assert np.mean([abs(_cos(rows, k, k + 1)) for k in range(first_bin, vocab - 1)]) < 0.3
