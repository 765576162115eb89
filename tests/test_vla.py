"""The VLA policy on every supported architecture, with tiny real models built offline.

What PPO relies on: rollout log-probs equal the update's teacher-forced ones (ratio 1), whatever the
left padding; KV-cached decoding equals uncached; only bin tokens come out; LoRA adapts exactly the
language model's linears; training leaves the base weights bit-identical; save -> load is exact.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import QUIET, vla_policy, vla_preflight
from safetensors.torch import load_file

from vla_structppo.checkpoints import CheckpointError
from vla_structppo.config import load_config
from vla_structppo.envs import make_env
from vla_structppo.policies.action_tokenizer import ActionTokenizerError
from vla_structppo.policies.vla_arch import ARCHS, UnsupportedArchitectureError, VLACheckpointError
from vla_structppo.testing.tiny_vlms import TINY_ARCHS, save_tiny_vla, write_action_tokenizer

D, K = 7, 256
LM_PATH = {"paligemma": "model.language_model", "paligemma2": "model.language_model",
           "qwen2_5_vl": "model.language_model", "smolvlm": "model.text_model", "llava": "model.language_model",
           "openvla": "language_model.model"}
PROJ = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
        "mlp.up_proj", "mlp.down_proj"]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, tiny_llava, tiny_openvla) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-vla")
    # the session's shared models; openvla codes actions itself, from one dataset's statistics (56 px: 16 patches)
    dirs = {"llava": tiny_llava, "openvla": tiny_openvla}
    for arch in TINY_ARCHS:
        if arch not in dirs:
            dirs[arch] = save_tiny_vla(arch, root / arch, seed=0)
            write_action_tokenizer(dirs[arch], D, K)
    return {arch: dirs[arch] for arch in TINY_ARCHS}


def base_weights(arch: str, path: Path) -> dict[str, torch.Tensor]:
    """The state dict of the model in ``path`` as its own loader reads it."""
    if arch == "openvla":
        from vla_structppo.policies.openvla import load_openvla

        return load_openvla(path).state_dict()
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path).state_dict()


def vla_overrides(path: Path, *extra: str) -> list[str]:
    return ["policy.type=vla", f"model.name_or_path={path}", "env.observation=image", f"env.action_dims={D}",
            f"env.num_bins={K}", *extra]


def make_policy(path: Path, *extra: str):
    torch.manual_seed(0)
    return vla_policy(load_config(None, vla_overrides(path, *extra)))


def observations(n: int = 4, seed: int = 0) -> dict:
    """Image observations whose instructions differ in length, so prompts are left-padded differently."""
    cfg = load_config(None, ["env.observation=image", "policy.type=vla", "model.name_or_path=x",
                             f"env.action_dims={D}", f"env.num_bins={K}", "env.structured.horizon=3"])
    env = make_env(cfg.env, n, seed=seed)
    obs, _ = env.reset(seed=seed)
    words = ["go", "move the point to the goal", "reach it now please", "move the point to the goal in 3 steps"]
    obs["instruction"] = np.array([words[i % len(words)] * (1 + i // len(words)) for i in range(n)])
    return obs


# -- the ratio, caching, bins ---------------------------------------------------------------------
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_rollout_logp_equals_teacher_forced_under_any_padding(arch, tiny_dirs):
    policy = make_policy(tiny_dirs[arch])
    inputs = policy.prepare(observations(4))
    lengths = inputs["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1  # the prompts really are padded differently
    with torch.no_grad():
        out = policy.act(inputs)
        ev = policy.evaluate(inputs, out.actions)
        # the update sees the samples in other minibatches, padded to another length
        longer = policy.prepare(observations(6, seed=1))
        mixed = policy.collate([longer, inputs])
        ev_mixed = policy.evaluate({k: v[6:] for k, v in mixed.items()}, out.actions)
    for other in (ev, ev_mixed):
        assert torch.allclose(other.logp, out.logp, atol=1e-5)
        ratio = torch.exp(other.logp.sum(-1) - out.logp.sum(-1))
        assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5)
        assert torch.allclose(other.features, out.features, atol=1e-5)
        assert torch.allclose(other.bin_probs, out.bin_probs, atol=1e-5)
    assert torch.allclose(policy.encode(inputs), out.features, atol=1e-5)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_cached_decoding_equals_uncached(arch, tiny_dirs):
    """Greedy decoding with the KV cache picks, at every dim, the argmax of an uncached forward over
    the prompt + the tokens so far, with the same distribution."""
    policy = make_policy(tiny_dirs[arch])
    inputs = policy.prepare(observations(3))
    with torch.no_grad():
        cached = policy.act(inputs, deterministic=True)
        chosen = []
        for i in range(D):  # uncached: one full forward per dim over prompt + chosen tokens
            so_far = torch.stack(chosen, 1) if chosen else torch.zeros(3, 0, dtype=torch.long)
            padded = torch.cat([so_far, torch.zeros(3, D - i, dtype=torch.long)], dim=1)
            probs = policy.evaluate(inputs, padded).bin_probs[:, i]  # dim i sees only the tokens before it
            assert torch.allclose(probs, cached.bin_probs[:, i], atol=1e-5)
            chosen.append(probs.argmax(-1))
    assert torch.equal(torch.stack(chosen, 1), cached.actions)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_only_bin_tokens_are_produced(arch, tiny_dirs):
    policy = make_policy(tiny_dirs[arch])
    inputs = policy.prepare(observations(8))
    bins = set(policy.action_tokenizer.token_ids)
    with torch.no_grad():
        for temperature in (1.0, 5.0):
            out = policy.act(inputs, temperature=temperature)
            tokens = policy.action_tokenizer.bins_to_tokens(out.actions)
            assert set(tokens.flatten().tolist()) <= bins
            assert out.actions.shape == (8, D) and out.bin_probs.shape == (8, D, K)
            assert torch.allclose(out.bin_probs.sum(-1), torch.ones(8, D), atol=1e-5)


# -- LoRA -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_lora_adapts_exactly_the_language_model_linears(arch, tiny_dirs):
    policy = make_policy(tiny_dirs[arch])
    expected = {f"{LM_PATH[arch]}.layers.{layer}.{proj}" for layer in range(2) for proj in PROJ}
    assert set(policy.lora_module_names()) == expected
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    with_vision = make_policy(tiny_dirs[arch], "model.lora.include_vision=true")
    vision = set(with_vision.lora_module_names()) - expected
    spec = ARCHS[policy.arch.name]
    assert vision and all(re.match(rf"^{spec.vision_model}\.", n) for n in vision)


def test_reference_policy_is_the_base_model(tiny_dirs):
    policy = make_policy(tiny_dirs["llava"])
    inputs = policy.prepare(observations(2))
    with torch.no_grad():
        for p in policy.parameters():
            if "lora_B" in str(p.shape) or p.requires_grad:
                p.add_(0.05)  # move the adapter away from its zero init
        actions = policy.act(inputs).actions
        adapted = policy.evaluate(inputs, actions).logp
        with policy.reference():
            ref = policy.evaluate(inputs, actions).logp
    base = vla_policy(load_config(None, vla_overrides(tiny_dirs["llava"], "model.lora.enabled=false")))
    with torch.no_grad():
        assert torch.allclose(ref, base.evaluate(inputs, actions).logp, atol=1e-5)
    assert not torch.allclose(adapted, ref, atol=1e-3)


# -- training, checkpoints ----------------------------------------------------------------------------
def quick_vla_run(path: Path, tmp: Path, name: str, *extra: str):
    from vla_structppo.train.ppo import train

    cfg = load_config(None, vla_overrides(
        path, "env.structured.horizon=1", "env.structured.num_goals=1", "env.num_envs=4", "ppo.num_steps=2", "ppo.total_timesteps=16",
        "ppo.num_minibatches=2", "ppo.num_epochs=1", "ppo.learning_rate=1e-3", f"output_dir={tmp}", f"name={name}",
        *QUIET, "logging.checkpoint_every=1", "logging.keep_checkpoints=5", *extra))
    return train(cfg)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_training_changes_adapter_and_heads_only_and_reloads_exactly(arch, tiny_dirs, tmp_path):
    result = quick_vla_run(tiny_dirs[arch], tmp_path, arch)
    agent = result.agent
    base = base_weights(arch, tiny_dirs[arch])
    trained = agent.policy.base_model.state_dict()
    checked = 0
    for key, value in base.items():
        # peft renames adapted layers' weights to <name>.base_layer.weight
        name = key if key in trained else re.sub(r"\.(weight|bias)$", r".base_layer.\1", key)
        if name in trained:
            assert torch.equal(trained[name], value), f"base weight {key} changed"
            checked += 1
    assert checked == len(base)

    ckpts = sorted((tmp_path / arch / "checkpoints").glob("0*"))
    assert len(ckpts) == 2
    first, last = ckpts
    lora_first = load_file(str(first / "adapter_model.safetensors"))
    lora_last = load_file(str(last / "adapter_model.safetensors"))
    assert any(k for k in lora_last if "lora_B" in k)
    assert any(not torch.equal(lora_first[k], lora_last[k]) for k in lora_last)
    assert any(v.abs().sum() > 0 for k, v in lora_last.items() if "lora_B" in k)  # left its zero init
    for head in ("value_head.safetensors", "advantage_head.safetensors"):
        a, b = load_file(str(first / head)), load_file(str(last / head))
        assert any(not torch.equal(a[k], b[k]) for k in a)

    # save -> load: a fresh policy from the checkpoint acts and scores identically
    fresh = vla_policy(load_config(None, vla_overrides(tiny_dirs[arch], f"init_from={last}")))
    inputs = agent.policy.prepare(observations(3))
    with torch.no_grad():
        out = agent.policy.act(inputs, deterministic=True)
        again = fresh.act(inputs, deterministic=True)
        assert torch.equal(out.actions, again.actions)
        assert torch.allclose(out.logp, again.logp, atol=1e-6)
        sampled = agent.policy.act(inputs).actions
        assert torch.allclose(agent.policy.evaluate(inputs, sampled).logp, fresh.evaluate(inputs, sampled).logp,
                              atol=1e-6)


def test_resume_continues_the_vla_run_exactly(tiny_dirs, tmp_path):
    from vla_structppo.train.ppo import TIMING_PREFIXES

    full = quick_vla_run(tiny_dirs["llava"], tmp_path, "full", "ppo.total_timesteps=32")
    ckpt = tmp_path / "full" / "checkpoints" / "000002"
    resumed = quick_vla_run(tiny_dirs["llava"], tmp_path, "resumed", "ppo.total_timesteps=32", f"resume={ckpt}")

    def strip(rows):
        return [{k: v for k, v in r.items() if not k.startswith(TIMING_PREFIXES)} for r in rows]

    assert strip(full.history[2:]) == strip(resumed.history)


def test_paligemma_without_token_type_ids_breaks_the_ratio(tiny_dirs):
    """The guard is real: drop token_type_ids in the update and the PPO ratio is no longer 1."""
    policy = make_policy(tiny_dirs["paligemma"])
    inputs = policy.prepare(observations(4))
    with torch.no_grad():
        out = policy.act(inputs)
        policy.arch = dataclasses.replace(policy.arch, token_type_ids=False)
        broken = policy.evaluate({k: v for k, v in inputs.items() if k != "token_type_ids"}, out.actions)
    ratio_dev = (broken.logp.sum(-1) - out.logp.sum(-1)).abs().max()
    assert ratio_dev > 2e-4  # 20x the tolerance the guarded path keeps (1e-5); ~1e-3 on this tiny model


def test_added_action_tokens_train_and_reload(tiny_dirs, tmp_path):
    """``model.action_tokens=add``: K new <act_k> tokens, embeddings resized, their rows saved with the adapter."""
    policy = make_policy(tiny_dirs["llava"], "model.action_tokens=add", "env.num_bins=16")
    at = policy.action_tokenizer
    assert at.mode == "add" and at.token_strings[0] == "<act_0>" and min(at.token_ids) >= 1024
    inputs = policy.prepare(observations(2))
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    target = torch.full((2, D), 3)
    for _ in range(3):
        loss = -policy.evaluate(inputs, target).logp.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.save_pretrained(tmp_path)
    (tmp_path / "config.yaml").write_text("")  # init_from reads the base path from the recipe instead
    fresh = vla_policy(load_config(None, vla_overrides(tiny_dirs["llava"], "model.action_tokens=add",
                                                            "env.num_bins=16", f"init_from={tmp_path}")))
    assert fresh.action_tokenizer.token_ids == at.token_ids
    with torch.no_grad():
        assert torch.allclose(policy.evaluate(inputs, target).logp, fresh.evaluate(inputs, target).logp, atol=1e-6)


def test_ppo_with_a_tiny_vla_raises_the_return(tiny_dirs, tmp_path):
    from vla_structppo.train.ppo import train

    cfg = load_config(None, vla_overrides(
        tiny_dirs["llava"], "env.structured.horizon=1", "env.structured.num_goals=1", "env.num_envs=16", "ppo.num_steps=4",
        "ppo.total_timesteps=1280", "ppo.num_minibatches=2", "ppo.num_epochs=2", "ppo.learning_rate=5e-4",
        "ppo.lr_schedule=constant", f"output_dir={tmp_path}", "name=learn", *QUIET, "logging.checkpoint_every=0"))
    history = train(cfg).history
    ret = [r["rollout/normalized_return"] for r in history]
    assert np.mean(ret[-3:]) > np.mean(ret[:3]) + 0.3, ret


# -- bad input, before any weights load ---------------------------------------------------------------
@pytest.fixture
def no_weight_loading(monkeypatch):
    """Fail the test if anything tries to load model weights."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the bad input was reported")

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", refuse)


def write_config(path: Path, **config) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_vocabulary_too_small_for_the_bins(tmp_path, no_weight_loading):
    d = write_config(tmp_path / "m", model_type="llava", text_config={"vocab_size": 200})
    with pytest.raises(ActionTokenizerError, match="cannot hold 256 action bins.*action_tokens=add"):
        vla_preflight(load_config(None, vla_overrides(d)))


def test_action_dims_must_match_the_env(tiny_dirs, no_weight_loading):
    cfg = load_config(None, vla_overrides(tiny_dirs["llava"], "env.action_dims=3"))
    with pytest.raises(ActionTokenizerError, match=r"7 dims x 256 bins.*env.action_dims=3"):
        vla_preflight(cfg)


def test_unsupported_architecture_lists_the_supported(tmp_path, no_weight_loading):
    d = write_config(tmp_path / "bert", model_type="bert")
    with pytest.raises(UnsupportedArchitectureError) as err:
        vla_preflight(load_config(None, vla_overrides(d)))
    for name in ("paligemma", "qwen2_5_vl", "idefics3", "llava", "PaliGemma2", "SmolVLM"):
        assert name in str(err.value)


def test_remote_code_stays_off_unless_asked(tmp_path, tiny_dirs, monkeypatch):
    d = write_config(tmp_path / "custom", model_type="my_custom_vla", auto_map={"AutoConfig": "x.Config"})
    with pytest.raises(UnsupportedArchitectureError, match="trust_remote_code is false"):
        vla_preflight(load_config(None, vla_overrides(d)))
    # and the loaders are called with trust_remote_code=False by default
    import transformers

    seen = []
    real = transformers.AutoModelForImageTextToText.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", spy)
    make_policy(tiny_dirs["llava"])
    assert seen == [False]


def test_checkpoint_missing_a_file_fails_clearly(tiny_dirs, tmp_path):
    result = quick_vla_run(tiny_dirs["llava"], tmp_path, "run")
    ckpt = sorted((result.run_dir / "checkpoints").glob("0*"))[-1]
    (ckpt / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="adapter_model.safetensors"):
        vla_preflight(load_config(None, vla_overrides(tiny_dirs["llava"], f"init_from={ckpt}")))
    with pytest.raises(CheckpointError, match="adapter_model.safetensors"):
        quick_vla_run(tiny_dirs["llava"], tmp_path, "run2", f"resume={ckpt}")


def test_policy_vla_needs_a_model_and_images():
    from vla_structppo.config import ConfigError

    with pytest.raises(ConfigError, match="model.name_or_path"):
        load_config(None, ["policy.type=vla", "env.observation=image"])
    with pytest.raises(ConfigError, match="env.observation=image"):
        load_config(None, ["policy.type=vla", "model.name_or_path=x"])


def test_missing_model_dir_fails_before_loading(tmp_path, no_weight_loading):
    with pytest.raises(VLACheckpointError, match="no such directory.*make_tiny_vla"):
        vla_preflight(load_config(None, vla_overrides(tmp_path / "nope")))


@pytest.mark.parametrize("arch", ["smolvlm", "paligemma", "openvla"])
def test_full_finetuning_saves_the_model_and_reloads_exactly(arch, tiny_dirs, tmp_path):
    result = quick_vla_run(tiny_dirs[arch], tmp_path, "full", "model.lora.enabled=false")
    policy = result.agent.policy
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and not any(re.match(rf"^{ARCHS[policy.arch.name].vision_model}", n) for n in trainable)
    last = sorted((result.run_dir / "checkpoints").glob("0*"))[-1]
    assert (last / "model.safetensors").is_file() and not (last / "adapter_model.safetensors").exists()
    fresh = vla_policy(load_config(None, vla_overrides(tiny_dirs[arch], "model.lora.enabled=false",
                                                            f"init_from={last}")))
    inputs = policy.prepare(observations(3))
    with torch.no_grad():
        actions = policy.act(inputs).actions
        assert torch.allclose(policy.evaluate(inputs, actions).logp, fresh.evaluate(inputs, actions).logp, atol=1e-6)
    resumed = quick_vla_run(tiny_dirs[arch], tmp_path, "full2", "model.lora.enabled=false",
                            "ppo.total_timesteps=24", f"resume={sorted((result.run_dir / 'checkpoints').glob('0*'))[0]}")
    assert resumed.history


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dirs):
    grads = []
    for flag in ("false", "true"):
        policy = make_policy(tiny_dirs["llava"], f"model.gradient_checkpointing={flag}")
        policy.train()
        inputs = policy.prepare(observations(3))
        actions = torch.full((3, D), 5)
        (-policy.evaluate(inputs, actions).logp.sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None]))
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-5)


def test_kl_to_the_reference_policy_is_logged_and_trains(tiny_dirs, tmp_path):
    result = quick_vla_run(tiny_dirs["llava"], tmp_path, "kl", "ppo.kl_coef=0.1", "ppo.total_timesteps=24",
                           "ppo.num_minibatches=1")  # update 1 = one step from the adapter's init
    kl = [r["losses/kl_ref"] for r in result.history]
    assert all(np.isfinite(k) and k >= 0 for k in kl)
    assert kl[0] < 1e-6 < max(kl)  # zero while the adapter is at its init, then the policy moves away


@pytest.mark.parametrize("layer", [-1, 1])
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_bin_logits_and_features_match_the_models_own_forward(arch, layer, tiny_dirs):
    """The policy skips the full-vocabulary output layer; its bin logits and features must be exactly the
    model's own (including PaliGemma2's logit soft-capping)."""
    policy = make_policy(tiny_dirs[arch], f"model.feature_layer={layer}")
    inputs = policy.prepare(observations(3))
    actions = torch.randint(0, K, (3, D))
    with torch.no_grad():
        ev = policy.evaluate(inputs, actions)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        full_ids = torch.cat([ids, policy.bin_token_ids[actions]], 1)
        full_mask = torch.cat([mask, torch.ones(3, D, dtype=mask.dtype)], 1)
        out = policy.model(input_ids=full_ids, attention_mask=full_mask, use_cache=False, output_hidden_states=True,
                           position_ids=policy._positions(full_ids, full_mask, inputs),
                           **policy._forward_kwargs(inputs, D))
    L = ids.shape[1]
    logits = out.logits[:, L - 1:L - 1 + D].index_select(-1, policy.bin_token_ids)
    assert torch.allclose(ev.bin_probs, torch.softmax(logits.float(), -1), atol=1e-5)
    assert torch.allclose(ev.features, out.hidden_states[layer][:, L - 1], atol=1e-5)
