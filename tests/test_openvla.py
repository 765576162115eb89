"""OpenVLA, native: parity with the original code, its processor and action coding, the whole workflow.

The battery every VLA architecture passes (ratio 1, cache, bins only, LoRA set, frozen base, save / load, full
fine-tuning) runs for OpenVLA in tests/test_vla.py; here is what is OpenVLA's own.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import QUIET, vla_policy, vla_preflight

from vla_structppo.config import load_config
from vla_structppo.policies.action_tokenizer import ActionTokenizer, ActionTokenizerError
from vla_structppo.policies.vla_arch import UnsupportedArchitectureError, VLACheckpointError
from vla_structppo.testing.tiny_openvla import DEFAULT_NORM_STATS, save_tiny_openvla

FIXTURE = Path(__file__).parent / "fixtures" / "openvla_parity.json"
D, K = 7, 256


@pytest.fixture(scope="module")
def released_layout(tmp_path_factory) -> dict[str, Path]:
    """The tiny checkpoint the parity fixture was made on (224 px, two datasets' statistics) + the pictures."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from openvla_parity import test_pictures

    root = tmp_path_factory.mktemp("openvla")
    ckpt = save_tiny_openvla(root / "checkpoint", seed=0)
    (root / "images").mkdir()
    return {"checkpoint": ckpt, "images": {p.name: p for p in test_pictures(root / "images")}}


@pytest.fixture(scope="module")
def small(tiny_openvla) -> Path:
    """A faster tiny OpenVLA for training tests: 56 px pictures (16 patches), one dataset's statistics."""
    return tiny_openvla


def overrides(path: Path, *extra: str) -> list[str]:
    return ["policy.type=vla", f"model.name_or_path={path}", "env.observation=image", f"env.action_dims={D}",
            f"env.num_bins={K}", *extra]


# -- parity with the original implementation -----------------------------------------------------------
def test_the_port_reproduces_the_original_on_its_recorded_outputs(released_layout):
    """tests/fixtures/openvla_parity.json holds what the original remote code (transformers 4.40.1, timm 0.9.10)
    produced on this very checkpoint and these pictures: tokens, restricted log-probs, un-normalised actions."""
    from vla_structppo.predict import Predictor

    expected = json.loads(FIXTURE.read_text())
    weights = released_layout["checkpoint"] / "model.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == expected["checkpoint_sha256"], \
        "the tiny checkpoint writer changed: make the fixture again (docs/vla.md#openvla)"
    for key, records in expected["by_unnorm_key"].items():
        predictor = Predictor(str(released_layout["checkpoint"]), [f"model.unnorm_key={key}"])
        for r in records:
            got = predictor(str(released_layout["images"][r["image"]]), r["instruction"])
            assert got["token_ids"] == r["token_ids"] == r["token_ids_full_vocab"], (key, r["image"])
            assert np.allclose(got["logprobs"], r["logprobs"], atol=1e-4, rtol=0), (key, r["image"])
            assert np.allclose(got["action"], r["action"], atol=1e-6, rtol=0), (key, r["image"])


def test_different_pictures_give_different_actions(released_layout):
    """The openvla#346 guard: with the vision tower skipped every picture would get the same action."""
    from vla_structppo.predict import Predictor

    predictor = Predictor(str(released_layout["checkpoint"]), ["model.unnorm_key=bridge_orig"])
    tokens = {tuple(predictor(str(p), "pick up the red block")["token_ids"])
              for p in released_layout["images"].values()}
    assert len(tokens) == len(released_layout["images"])


# -- the processor and the action coding, on known inputs ---------------------------------------------------
def test_image_transform_is_pil_bicubic_and_two_normalisations(released_layout):
    from PIL import Image

    from vla_structppo.policies.openvla import OpenVLAProcessor

    proc = OpenVLAProcessor.from_pretrained(released_layout["checkpoint"])
    img = Image.open(released_layout["images"]["picture1_320x240.png"])  # not square: stretched, no crop
    pixels = proc.image_processor([img])[0].numpy()
    x = np.asarray(img.convert("RGB").resize((224, 224), Image.BICUBIC), np.float32) / np.float32(255)
    dino = (x - np.array([0.484375, 0.455078125, 0.40625], np.float32)) / np.array(
        [0.228515625, 0.2236328125, 0.224609375], np.float32)
    siglip = (x - np.float32(0.5)) / np.float32(0.5)
    assert pixels.shape == (6, 224, 224)
    assert np.array_equal(pixels[:3], dino.transpose(2, 0, 1)) and np.array_equal(pixels[3:], siglip.transpose(2, 0, 1))


def test_prompt_bos_trailing_space_token_and_left_padding(released_layout):
    from vla_structppo.policies.openvla import IMAGE_TOKEN_ID, OpenVLAProcessor

    proc = OpenVLAProcessor.from_pretrained(released_layout["checkpoint"])
    policy = vla_policy(load_config(None, overrides(released_layout["checkpoint"], "model.unnorm_key=bridge_orig")))
    text = policy.prompt_text("Pick up the RED block")
    assert text == "In: What action should the robot take to pick up the red block?\nOut:"
    ids = proc.token_ids(text)
    assert ids[0] == 1 and ids[-1] == 29871 and ids[1:257] == [IMAGE_TOKEN_ID] * 256
    assert ids[257:-1] == proc.tokenizer(text)["input_ids"][1:]
    batch = proc([np.zeros((8, 8, 3), np.uint8)] * 2, [text, "In: go?\nOut:"])
    short = batch["attention_mask"][1]
    assert batch["input_ids"][1, 0] == proc.tokenizer.pad_token_id == 32000 and short[0] == 0 and short[-1] == 1


def test_action_coding_is_exact_in_both_directions():
    """Token ids 31744..31999 (32000 - bin), 255 bin centres, q01/q99 + mask — prismatic's own formulas."""
    stats = DEFAULT_NORM_STATS["bridge_orig"]["action"]
    tok = ActionTokenizer.openvla({"bridge_orig": DEFAULT_NORM_STATS["bridge_orig"]}, None)
    assert tok.token_ids[0] == 31999 and tok.token_ids[-1] == 31744 and tok.unnorm_key == "bridge_orig"
    edges = np.linspace(-1, 1, 256)
    centers = (edges[:-1] + edges[1:]) / 2
    q01, q99, mask = (np.array(stats[k]) for k in ("q01", "q99", "mask"))
    rng = np.random.default_rng(0)
    actions = rng.uniform(q01 - 0.01, q99 + 0.01, size=(500, 7))
    actions[:, 6] = rng.uniform(0, 1, 500)
    # encode: the data pipeline's normalisation, then prismatic's ActionTokenizer (clip, digitize, 32000 - d)
    normed = np.where(mask, np.clip(2 * (actions - q01) / (q99 - q01 + 1e-8) - 1, -1, 1), actions)
    original_tokens = 32000 - np.digitize(np.clip(normed, -1, 1), edges)
    assert np.array_equal(tok.bins_to_tokens(tok.encode(actions)), original_tokens)
    # decode: predict_action's clip(32000 - token - 1, 0, 254) -> centres -> un-normalise with the mask
    tokens = rng.integers(31744, 32000, size=(500, 7))
    normalized = centers[np.clip(32000 - tokens - 1, 0, 254)]
    original_actions = np.where(mask, 0.5 * (normalized + 1) * (q99 - q01) + q01, normalized)
    assert np.array_equal(tok.decode(tok.tokens_to_bins(tokens)), original_actions)
    assert np.array_equal(tok.decode(np.full((1, 7), 255)), tok.decode(np.full((1, 7), 254)))  # 255 centres


def test_the_coding_travels_with_checkpoints(tmp_path):
    tok = ActionTokenizer.openvla(DEFAULT_NORM_STATS, "libero_spatial_no_noops")
    tok.save(tmp_path)
    again = ActionTokenizer.load(tmp_path)
    assert again == tok and again.mode == "openvla" and again.mask[-1] is False


# -- bad input, named before any weights load --------------------------------------------------------------
def copy_of(released_layout, tmp_path: Path) -> Path:
    d = tmp_path / "copy"
    shutil.copytree(released_layout["checkpoint"], d)
    return d


def test_an_unknown_unnorm_key_lists_the_available(released_layout):
    with pytest.raises(ActionTokenizerError, match=r"'nope' is not in the checkpoint's norm_stats; available: "
                                                   r"\['bridge_orig', 'libero_spatial_no_noops'\]"):
        vla_preflight(load_config(None, overrides(released_layout["checkpoint"], "model.unnorm_key=nope")))
    with pytest.raises(ActionTokenizerError, match="set model.unnorm_key to one of"):
        vla_preflight(load_config(None, overrides(released_layout["checkpoint"])))


def test_an_unknown_vision_backbone_lists_the_supported(released_layout, tmp_path):
    d = copy_of(released_layout, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["timm_model_ids"][1] = "vit_huge_patch14_clip_224"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitectureError, match=r"unknown vision backbone id 'vit_huge_patch14_clip_224'.*"
                                                           r"vit_large_patch14_reg4_dinov2.lvd142m"):
        vla_preflight(load_config(None, overrides(d, "model.unnorm_key=bridge_orig")))


def test_action_dims_must_match_the_env(released_layout):
    with pytest.raises(ActionTokenizerError, match=r"7 dims x 256 bins.*env.action_dims=4"):
        vla_preflight(load_config(None, overrides(released_layout["checkpoint"], "env.action_dims=4",
                                                  "model.unnorm_key=bridge_orig")))


def _resave(d: Path, state: dict) -> None:
    from safetensors.torch import save_file

    (d / "model.safetensors").unlink()
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})


def test_missing_and_unexpected_weight_keys_are_named(released_layout, tmp_path):
    from safetensors.torch import load_file

    d = copy_of(released_layout, tmp_path)
    state = load_file(str(d / "model.safetensors"))
    state.pop("projector.fc2.bias")
    state["projector.fc4.weight"] = torch.zeros(2, 2)
    _resave(d, state)
    with pytest.raises(VLACheckpointError, match=r"missing \['projector.fc2.bias'\], unexpected "
                                                 r"\['projector.fc4.weight'\]"):
        vla_preflight(load_config(None, overrides(d, "model.unnorm_key=bridge_orig")))


def test_a_shard_missing_from_the_index_is_named(released_layout, tmp_path):
    d = tmp_path / "sharded"
    save_tiny_openvla(d, seed=0, max_shard_bytes=2 << 20)  # the released layout: shards + an index
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (d / "model.safetensors").exists()
    vla_preflight(load_config(None, overrides(d, "model.unnorm_key=bridge_orig")))  # complete: fine
    (d / shards[1]).unlink()
    with pytest.raises(VLACheckpointError, match=f"lists shards that are not in .*{shards[1]}"):
        vla_preflight(load_config(None, overrides(d, "model.unnorm_key=bridge_orig")))


def test_remote_code_never_runs(released_layout, monkeypatch):
    """config.json's auto_map is ignored and trust_remote_code stays off: no Auto class is asked."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("an Auto class was used for OpenVLA")

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", refuse)
    policy = vla_policy(load_config(None, overrides(released_layout["checkpoint"], "model.unnorm_key=bridge_orig")))
    assert type(policy.base_model).__name__ == "OpenVLAForActionPrediction"


# -- predict -----------------------------------------------------------------------------------------------
def test_predict_prints_the_action_and_its_json(released_layout, capsys):
    from vla_structppo.cli import main

    image = str(released_layout["images"]["picture0_256x256.png"])
    ckpt = str(released_layout["checkpoint"])
    main(["predict", ckpt, f"image={image}", "instruction=Pick up the RED block", "model.unnorm_key=bridge_orig",
          "--json"])
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"token_ids", "bins", "logprobs", "action"} and len(out["token_ids"]) == 7
    assert all(31744 <= t < 32000 for t in out["token_ids"]) and all(lp <= 0 for lp in out["logprobs"])
    main(["predict", ckpt, f"image={image}", "instruction=Pick up the RED block", "model.unnorm_key=bridge_orig"])
    assert capsys.readouterr().out.startswith("action: [")
    with pytest.raises(SystemExit):
        main(["predict", ckpt, "instruction=x"])
    assert "predict needs image=..." in capsys.readouterr().err


# -- the workflow: SFT, PPO, resume -----------------------------------------------------------------------------
IMAGE_TASK = ["env.structured.horizon=1", *QUIET]


def test_a_tiny_openvla_overfits_64_demonstrations(small, tmp_path):
    from vla_structppo.data.demos import save_demos
    from vla_structppo.data.record import structured_demos
    from vla_structppo.train.sft import sft

    cfg = load_config(None, overrides(small, *IMAGE_TASK, "env.structured.num_goals=8"))
    save_demos(structured_demos(cfg.env, 64, seed=0), tmp_path / "demos")
    result = sft(load_config(None, overrides(small, *IMAGE_TASK, "env.structured.num_goals=8",
                                             f"sft.dataset={tmp_path / 'demos'}", "sft.num_epochs=20",
                                             "sft.learning_rate=2e-3", "sft.bounds=model", f"output_dir={tmp_path}",
                                             "name=sft")))
    assert result.final["sft/final_token_accuracy"] >= 0.95, result.history[-1]


def test_ppo_on_the_image_task_raises_the_return(small, tmp_path):
    from vla_structppo.train.ppo import train

    history = train(load_config(None, overrides(
        small, *IMAGE_TASK, "env.structured.num_goals=1", "env.num_envs=16", "ppo.num_steps=4",
        "ppo.total_timesteps=1280", "ppo.num_minibatches=2", "ppo.num_epochs=2", "ppo.learning_rate=5e-4",
        "ppo.lr_schedule=constant", f"output_dir={tmp_path}", "name=ppo", "logging.checkpoint_every=0"))).history
    ret = [r["rollout/normalized_return"] for r in history]
    assert np.mean(ret[-3:]) > np.mean(ret[:3]) + 0.3, ret


def test_resume_continues_an_openvla_run_exactly(small, tmp_path):
    from vla_structppo.train.ppo import TIMING_PREFIXES, train

    common = overrides(small, *IMAGE_TASK, "env.structured.num_goals=1", "env.num_envs=4", "ppo.num_steps=2",
                       "ppo.total_timesteps=32", "ppo.num_minibatches=2", "ppo.num_epochs=1",
                       "logging.checkpoint_every=1", "logging.keep_checkpoints=0", f"output_dir={tmp_path}")
    full = train(load_config(None, [*common, "name=full"]))
    # continue the run from its update-2 checkpoint, in place: updates 3-4 again, with the same numbers
    resumed = train(load_config(None, [*common, "name=full", f"resume={tmp_path / 'full' / 'checkpoints' / '000002'}"]))

    def strip(rows):
        return [{k: v for k, v in r.items() if not k.startswith(TIMING_PREFIXES)} for r in rows]

    assert strip(full.history[2:]) == strip(resumed.history)


def test_eval_measures_a_released_model_as_it_is(small, tmp_path, monkeypatch):
    """eval.checkpoint may name a downloaded model dir (or Hub id): the recipe's env and settings, fresh heads,
    results beside (not inside) the recipe's run dir, which stays free for the fine-tuning run."""
    from vla_structppo.checkpoints import pretrained_model
    from vla_structppo.eval import run_eval

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "mine" / "checkpoints").mkdir(parents=True)
    assert pretrained_model(str(small)) == str(small)
    assert pretrained_model("openvla/openvla-7b-finetuned-libero-spatial") is not None  # a Hub id
    assert pretrained_model("runs/typo") is None  # under a local dir: a path, not a Hub id
    assert pretrained_model("runs/mine") is None and pretrained_model("hf://org/name") is None

    cfg = load_config(None, overrides(small, *IMAGE_TASK, "env.structured.num_goals=1", "env.num_envs=2",
                                      f"eval.checkpoint={small}", "eval.num_episodes=2", "eval.num_envs=2",
                                      "eval.videos=0", f"output_dir={tmp_path / 'out'}", "name=recipe"))
    first = run_eval(cfg, {})
    assert first["overall"]["episodes"] == 2 and first["checkpoint_dir"] == str(small)
    results = tmp_path / "out" / f"pretrained-{small.name}" / "eval" / "results.json"
    assert results.is_file() and not (tmp_path / "out" / "recipe").exists()
    assert run_eval(cfg, {})["overall"] == first["overall"]  # the same numbers again (fresh heads play no part)

    from vla_structppo.config import ConfigError

    with pytest.raises(ConfigError, match="policy.type=vla"):
        run_eval(load_config(None, [f"eval.checkpoint={small}", f"output_dir={tmp_path / 'out'}"]), {})
