"""The checkpoint layer: one definition of a checkpoint, one base-model rule, one way to load.

CLI-level where the user meets the behaviour: ``train init_from=`` a chain of runs, ``eval`` of it,
the pushed card naming the real base model, the env keys an evaluation is asked for.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from helpers import QUIET

from vla_structppo import checkpoints as ckpt
from vla_structppo.cli import main
from vla_structppo.config import load_config

D, K = 7, 256
IMAGE_TASK = ["policy.type=vla", "env.observation=image", f"env.action_dims={D}", f"env.num_bins={K}",
              "env.structured.num_goals=2", "env.image_size=16", "env.num_envs=4", "ppo.num_steps=2",
              "ppo.total_timesteps=8", "ppo.num_minibatches=2", "ppo.num_epochs=1", *QUIET]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from vla_structppo.testing.tiny_vlms import save_tiny_vla, write_action_tokenizer

    path = save_tiny_vla("llava", tmp_path_factory.mktemp("tiny") / "llava", seed=0, image_size=16)
    write_action_tokenizer(path, D, K)
    return path


@pytest.fixture(scope="module")
def chain(tiny, tmp_path_factory) -> dict[str, Path]:
    """demos -> SFT (names the base model) -> PPO `a` (init_from the SFT checkpoint, no model) -> PPO `b`
    (init_from a's checkpoint, no model): the chain a user builds by continuing runs."""
    root = tmp_path_factory.mktemp("chain")
    common = [*IMAGE_TASK, f"output_dir={root}", f"sft.dataset={root / 'demos'}", "sft.max_samples=16",
              "sft.num_epochs=1", "sft.bounds=model"]
    main(["demos", *common, f"model.name_or_path={tiny}"])
    main(["sft", *common, "name=sft", f"model.name_or_path={tiny}"])
    main(["train", *common, "name=a", f"init_from={root / 'sft'}"])
    main(["train", *common, "name=b", f"init_from={root / 'a' / 'checkpoints' / 'last'}"])
    return {"root": root, "sft": root / "sft", "a": root / "a", "b": root / "b"}


# -- what a checkpoint is, where ---------------------------------------------------------------------------
def test_resolve_accepts_checkpoint_and_run_dirs(chain):
    last = ckpt.resolve(chain["a"])
    assert last == (chain["a"] / "checkpoints" / "last").resolve()
    assert ckpt.resolve(last) == last
    assert ckpt.layout.checkpoint_kind(last) == "adapter"
    assert ckpt.run_dir_of(last) == chain["a"].resolve()
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.resolve(chain["root"] / "nope")


def test_base_model_is_followed_through_the_init_from_chain(chain, tiny):
    for run in ("sft", "a", "b"):
        assert ckpt.base_model_of(ckpt.resolve(chain[run])) == (str(tiny), None), run
    b = ckpt.read_config(ckpt.resolve(chain["b"]))
    assert b.model.name_or_path is None and b.init_from  # it names no model itself


def test_train_eval_and_card_agree_on_the_base_model(chain, tiny, tmp_path):
    """A PPO run started from a PPO run started from SFT trains (it used to fail with "no model"), evaluates,
    and its card names the real base model (it used to say "a local model (`None`)")."""
    assert (chain["b"] / "checkpoints" / "last" / "adapter_model.safetensors").is_file()
    main(["eval", f"output_dir={tmp_path}", f"eval.checkpoint={chain['b']}", "eval.num_episodes=2",
          "eval.num_envs=2", "eval.videos=0"])
    assert json.loads((chain["b"] / "eval" / "results.json").read_text())["overall"]["episodes"] == 2
    from vla_structppo.hub import stage_run

    stage_run(chain["b"], "org/b", tmp_path / "staged")
    card = (tmp_path / "staged" / "README.md").read_text()
    assert f"a local model (`{tiny}`)" in card and "`None`" not in card
    staged = ckpt.read_config(tmp_path / "staged")  # the pushed config names its base: no chain to follow
    assert staged.model.name_or_path == str(tiny)


def test_checkpoints_hold_a_real_readme_not_peft_boilerplate(chain, tiny):
    readme = (ckpt.resolve(chain["a"]) / "README.md").read_text()
    assert "More Information Needed" not in readme
    assert str(tiny) in readme or "init_from" in readme
    assert "vla-structppo eval" in readme


def test_preflight_and_hub_resolution_run_once_per_load(chain, monkeypatch, tmp_path):
    from vla_structppo.policies import vla_loading

    calls = {"preflight": 0, "download": 0}
    real_preflight, last = vla_loading.preflight, ckpt.resolve(chain["a"])

    def counting_preflight(*args, **kwargs):
        calls["preflight"] += 1
        return real_preflight(*args, **kwargs)

    def fake_download(uri):
        calls["download"] += 1
        return last

    monkeypatch.setattr(vla_loading, "preflight", counting_preflight)
    monkeypatch.setattr("vla_structppo.checkpoints.locate.download", fake_download)
    ckpt.load_agent("hf://org/a")
    assert calls == {"preflight": 1, "download": 1}
    calls.update(preflight=0, download=0)
    main(["train", *IMAGE_TASK, f"output_dir={tmp_path}", "name=c", "init_from=hf://org/a@v1"])
    assert calls == {"preflight": 1, "download": 1}


# -- evaluation: the env it is asked for ------------------------------------------------------------------
def test_eval_uses_every_env_key_given_even_a_default(tmp_path):
    """A checkpoint trained with a non-default env setting, evaluated with that key set back to its default
    on the command line, runs on the default (it used to keep the checkpoint's value silently)."""
    main(["train", f"output_dir={tmp_path}", "name=h3", "env.structured.horizon=3", "env.num_envs=8",
          "ppo.num_steps=3", "ppo.total_timesteps=24", "ppo.num_minibatches=2", *QUIET])
    run = tmp_path / "h3"
    args = ["eval", f"output_dir={tmp_path}", f"eval.checkpoint={run}", "eval.num_episodes=4", "eval.num_envs=2"]
    main(args)
    trained_env = json.loads((run / "eval" / "results.json").read_text())
    assert trained_env["env"]["structured"]["horizon"] == 3 and trained_env["overall"]["mean_length"] == 3
    main([*args, "env.structured.horizon=1"])  # 1 is the default
    asked = json.loads((run / "eval" / "results.json").read_text())
    assert asked["env"]["structured"]["horizon"] == 1 and asked["overall"]["mean_length"] == 1


class ToyTask(gym.Env):
    """A stand-in simulator task (continuous actions, a picture): task ``a`` succeeds on its 2nd step,
    task ``b`` never; episodes last at most 3 steps."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.action_space = gym.spaces.Box(-1.0, 1.0, (D,), np.float32)
        self.observation_space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)})
        self.t = 0

    def _obs(self):
        return {"image": np.full((8, 8, 3), 10 * self.t, np.uint8)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {"success": False}

    def step(self, action):
        self.t += 1
        success = self.task == "a" and self.t == 2
        return self._obs(), float(success), success, self.t >= 3 and not success, {"success": success}

    def expert_action(self):
        return np.zeros(D, np.float32)


def test_multi_task_simulators_report_one_row_per_task(monkeypatch):
    """SimVectorEnv (the wrapper LIBERO, ManiSkill and MetaWorld share) labels every env with its task, so the
    evaluation counts num_episodes per task, one row each (LIBERO used to pool a whole suite in one row)."""
    from vla_structppo.envs import check_env, registry
    from vla_structppo.envs.sim import SimVectorEnv, make_vector
    from vla_structppo.eval import evaluate_policy

    def toy(cfg, num_envs, seed, chunk_size=1, group_size=1):
        tasks = [("a", "b")[j % 2] for j in range(num_envs)]
        return SimVectorEnv(make_vector([lambda t=t: ToyTask(t) for t in tasks], "sync"), ([-1.0] * D, [1.0] * D),
                            cfg.num_bins, task_labels=tasks, instructions=[f"do {t}" for t in tasks],
                            has_expert=True, seed=seed)

    monkeypatch.setitem(registry.ENVS, "libero", toy)
    cfg = load_config(None, ["env.id=libero", "env.task=libero_spatial", f"env.action_dims={D}", "env.num_bins=11"])
    check_env(toy(cfg.env, 3, 0))
    result = evaluate_policy(None, cfg.env, num_episodes=5, seed=0, num_envs=3, expert=True)
    assert list(result["tasks"]) == ["a", "b"]
    assert result["tasks"]["a"]["episodes"] == result["tasks"]["b"]["episodes"] == 5
    assert result["tasks"]["a"]["success_rate"] == 1.0 and result["tasks"]["a"]["mean_length"] == 2.0
    assert result["tasks"]["b"]["success_rate"] == 0.0 and result["overall"]["episodes"] == 10


def test_a_vla_acts_in_a_simulator_with_its_own_action_coding(monkeypatch):
    """The env decodes a VLA's bins as the policy means them (its action tokenizer's coding: OpenVLA's bin
    centres and dataset statistics), not on the simulator's uniform grid."""
    from vla_structppo.bins import OpenVLABins
    from vla_structppo.envs import registry
    from vla_structppo.envs.sim import SimVectorEnv, make_vector

    executed = []

    class Recording(ToyTask):
        def step(self, action):
            executed.append(np.asarray(action, np.float64))
            return super().step(action)

    def toy(cfg, num_envs, seed, chunk_size=1, group_size=1):
        return SimVectorEnv(make_vector([lambda: Recording("b")] * num_envs, "sync"), ([-1.0] * D, [1.0] * D),
                            cfg.num_bins, task_labels=["b"] * num_envs, instructions=["do b"] * num_envs,
                            has_expert=True, seed=seed)

    monkeypatch.setitem(registry.ENVS, "libero", toy)
    cfg = load_config(None, ["env.id=libero", "env.task=libero_spatial", f"env.action_dims={D}", "env.num_bins=256"])
    env = registry.make_env(cfg.env, 1, 0)
    env.reset(seed=0)
    bins = np.array([[0, 50, 100, 150, 200, 254, 255]])
    env.step(bins)
    assert np.allclose(executed[-1], -1 + 2 * bins[0] / 255, atol=1e-6)  # the simulator's own grid
    coding = OpenVLABins([-0.1] * 6 + [0.0], [0.1] * 6 + [1.0], [True] * 6 + [False])
    env.set_coding(coding)
    env.step(bins)
    assert np.allclose(executed[-1], coding.decode(bins)[0], atol=1e-6)  # the policy's coding
    assert np.array_equal(env.expert_bins(), coding.encode(np.zeros((1, D))))
