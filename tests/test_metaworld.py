"""MetaWorld env: the env contract, rendering, the scripted experts, seeding, async mode, demos, a VLA."""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest
from helpers import QUIET

from vla_structppo.config import EnvConfig, MetaWorldEnvConfig, TrainConfig

pytestmark = [
    pytest.mark.sim,
    pytest.mark.skipif(importlib.util.find_spec("metaworld") is None,
                       reason="metaworld is not installed (bash scripts/setup_metaworld.sh)"),
]


def env_cfg(**kw) -> EnvConfig:
    """A MetaWorld env config; MetaWorld's own settings (camera, mesh_lod ...) go into env.metaworld."""
    base = dict(id="metaworld", task="reach-v3", action_dims=4, num_bins=256, observation="image", image_size=32,
                max_episode_steps=150, terminate_on_success=True)
    own = {k: kw.pop(k) for k in list(kw) if k in {f.name for f in dataclasses.fields(MetaWorldEnvConfig)}}
    return EnvConfig(**{**base, **kw}, metaworld=MetaWorldEnvConfig(**own))


def make(num_envs: int = 2, seed: int = 0, **kw):
    from vla_structppo.envs import make_env

    return make_env(env_cfg(**kw), num_envs, seed=seed)


def test_reset_step_render_follow_the_contract():
    from gymnasium.vector import AutoresetMode

    env = make(2, image_size=48, state_obs=True, max_episode_steps=3, terminate_on_success=False)
    try:
        obs, info = env.reset(seed=3)
        assert obs["image"].shape == (2, 48, 48, 3) and obs["image"].dtype == np.uint8
        assert list(obs["instruction"]) == ["reach the goal"] * 2
        assert obs["state"].shape == (2, 4) and obs["state"].dtype == np.float32
        assert obs["image"].std() > 10  # a real picture, not a black frame
        assert env.action_bounds == ([-1.0] * 4, [1.0] * 4)
        assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
        assert env.single_action_space.nvec.tolist() == [256] * 4
        bins = np.random.default_rng(0).integers(0, 256, (2, 4))
        for _ in range(3):
            obs, reward, terminated, truncated, info = env.step(bins)
            assert reward.shape == (2,) and info["success"].dtype == bool
        # the time limit truncates; same-step autoreset: final_obs holds the last picture of all N rows
        assert truncated.all() and not terminated.any()
        assert info["_episode"].all() and info["episode_length"].tolist() == [3, 3]
        assert info["final_obs"]["image"].shape == (2, 48, 48, 3) and info["_final_obs"].all()
        assert not np.array_equal(info["final_obs"]["image"], obs["image"])  # obs is already the reset one
        assert env.render().shape == (2, 48, 48, 3)
    finally:
        env.close()


def test_metaworld_follows_the_env_contract():
    from vla_structppo.envs import check_env

    for kw in (dict(observation="image", state_obs=True), dict(observation="state", task="MT10")):
        env = make(2, max_episode_steps=2, **kw)
        try:
            check_env(env, steps=3)
        finally:
            env.close()


def test_eval_uses_the_camera_asked_for_even_the_default(tmp_path):
    """A checkpoint trained with camera corner3, evaluated with env.metaworld.camera=corner2 (the default)
    on the command line, is filmed from corner2 (the evaluation used to keep corner3 silently)."""
    import json

    from vla_structppo.cli import main

    common = [f"output_dir={tmp_path}", "env.id=metaworld", "env.task=reach-v3", "env.action_dims=4",
              "env.num_bins=11", "env.max_episode_steps=2", *QUIET]
    main(["train", *common, "name=c3", "env.metaworld.camera=corner3", "env.num_envs=2", "ppo.num_steps=2",
          "ppo.total_timesteps=4", "ppo.num_minibatches=2"])
    run = tmp_path / "c3"
    main(["eval", *common, f"eval.checkpoint={run}", "eval.num_episodes=1", "eval.num_envs=1",
          "env.metaworld.camera=corner2"])
    assert json.loads((run / "eval" / "results.json").read_text())["env"]["metaworld"]["camera"] == "corner2"


def test_state_observation_is_the_39d_vector():
    env = make(2, observation="state")
    try:
        obs, _ = env.reset(seed=0)
        assert obs.shape == (2, 39) and obs.dtype == np.float32
        obs, *_ = env.step(np.full((2, 4), 128))
        assert obs.shape == (2, 39)
    finally:
        env.close()


def test_same_seed_gives_identical_observations_and_seeds_differ_across_envs():
    runs = []
    for _ in range(2):
        env = make(2, observation="image", state_obs=True)
        obs, _ = env.reset(seed=11)
        frames = [obs["image"]]
        for _ in range(5):
            obs, *_ = env.step(env.expert_bins())
            frames.append(obs["image"])
        runs.append(np.stack(frames))
        env.close()
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0][:, 0], runs[0][:, 1])  # env i is seeded with seed + i: other goals


@pytest.mark.parametrize("task", ["reach-v3", "button-press-topdown-v3", "drawer-open-v3"])
def test_scripted_expert_through_bins_succeeds(task):
    env = make(5, task=task, observation="state")
    try:
        first = _expert_first_episodes(env, seed=200, max_steps=150)
        assert first["success"].sum() >= 4, (task, first["success"])
    finally:
        env.close()


def _expert_first_episodes(env, seed: int, max_steps: int) -> dict[str, np.ndarray]:
    """Run the scripted expert until every env has ended one episode; that first episode's success,
    length and return per env."""
    env.reset(seed=seed)
    n = env.num_envs
    ended = np.zeros(n, bool)
    out = {"success": np.zeros(n, bool), "episode_length": np.zeros(n), "episode_return": np.zeros(n)}
    for _ in range(max_steps):
        _, _, _, _, info = env.step(env.expert_bins())
        if "_episode" in info:
            first = info["_episode"] & ~ended
            for key, values in out.items():
                values[first] = info[key][first]
            ended |= info["_episode"]
        if ended.all():
            return out
    raise AssertionError(f"only {ended.sum()}/{n} envs ended an episode within {max_steps} steps")


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="unknown MetaWorld task 'reach-v9'.*MT10.*drawer-open-v3"):
        make(1, task="reach-v9")


def test_wrong_action_dims_is_refused():
    with pytest.raises(ValueError, match="env.action_dims=4"):
        make(1, action_dims=7)


def test_mt10_cycles_tasks_with_instructions():
    env = make(3, task="MT10", observation="state")
    try:
        assert env.task_labels == ["reach-v3", "push-v3", "pick-place-v3"]
        assert list(env.instructions) == ["reach the goal", "push the puck to the goal",
                                          "pick up the puck and place it at the goal"]
        env.reset(seed=0)
        assert env.expert_bins().shape == (3, 4)
    finally:
        env.close()


def test_async_matches_sync():
    results = {}
    for mode in ("sync", "async"):
        env = make(2, vector_mode=mode)
        try:
            obs, _ = env.reset(seed=5)
            for _ in range(3):
                obs, reward, *_ = env.step(env.expert_bins())
            results[mode] = (obs["image"], reward)
        finally:
            env.close()
    assert np.array_equal(results["sync"][0], results["async"][0])
    np.testing.assert_allclose(results["sync"][1], results["async"][1])


def test_record_demos_keeps_successful_expert_episodes(tmp_path):
    from vla_structppo.data.demos import load_demos, save_demos
    from vla_structppo.data.record import record_demos

    cfg = TrainConfig()
    cfg.env = env_cfg(task="button-press-topdown-v3", num_envs=2, state_obs=True)
    cfg.demos = dataclasses.replace(cfg.demos, num_episodes=2, seed=100)
    ds = record_demos(cfg, progress=False)
    assert set(ds.column_names) == {"image", "instruction", "action", "success", "episode_index", "state"}
    assert sorted(set(ds["episode_index"])) == [0, 1] and all(ds["success"])
    actions = np.asarray(ds["action"])
    # the executed actions lie on the 256-bin grid over [-1, 1]
    np.testing.assert_allclose((actions + 1) / 2 * 255, np.rint((actions + 1) / 2 * 255), atol=1e-4)
    _, stats = load_demos(save_demos(ds, tmp_path / "demos"))
    assert stats.action_dims == 4 and stats.count == len(ds)


def test_tiny_vla_runs_a_rendered_episode(tmp_path, tiny_llava):
    import shutil

    import torch
    from helpers import vla_policy

    from vla_structppo.config import load_config
    from vla_structppo.testing.tiny_vlms import write_action_tokenizer

    model_dir = shutil.copytree(tiny_llava, tmp_path / "vla")  # a copy: its action tokenizer is rewritten
    write_action_tokenizer(model_dir, action_dims=4, num_bins=256)
    cfg = load_config(None, ["policy.type=vla", f"model.name_or_path={model_dir}", "env.id=metaworld",
                             "env.task=reach-v3", "env.action_dims=4", "env.num_bins=256", "env.observation=image",
                             "env.max_episode_steps=4", "env.image_size=32"])
    env = make(2, max_episode_steps=4)
    try:
        policy = vla_policy(cfg, bounds=env.action_bounds)
        obs, _ = env.reset(seed=0)
        for _ in range(4):
            with torch.no_grad():
                out = policy.act(policy.prepare(obs))
            actions = out.actions.numpy()
            assert actions.shape == (2, 4) and actions.min() >= 0 and actions.max() < 256
            obs, _, terminated, truncated, info = env.step(actions)
            if (terminated | truncated).any():
                break
        assert "_episode" in info and info["episode_length"].max() <= 4
    finally:
        env.close()


def test_mesh_lod_renders_fewer_triangles_with_identical_physics():
    """env.mesh_lod simplifies meshes for rendering only: the state trajectory is bit-identical, the
    picture nearly so, and the renderer draws far fewer triangles."""
    runs = {}
    for lod in (0.0, 0.04):
        env = make(1, task="drawer-open-v3", mesh_lod=lod, image_size=64, state_obs=True)
        try:
            obs, _ = env.reset(seed=7)
            states, images = [], [obs["image"]]
            for _ in range(25):
                obs, *_ = env.step(env.expert_bins())
                states.append(env._inner.envs[0]._raw.data.qpos.copy())
                images.append(obs["image"])
            faces = int(env._inner.envs[0]._raw.model.mesh_facenum.sum())
            runs[lod] = (np.stack(states), np.stack(images).astype(np.int16), faces)
        finally:
            env.close()
    (full_q, full_img, full_faces), (lod_q, lod_img, lod_faces) = runs[0.0], runs[0.04]
    assert np.array_equal(full_q, lod_q)
    assert np.abs(full_img - lod_img).mean() < 2.0  # of 255
    assert lod_faces < full_faces / 4, (lod_faces, full_faces)


def test_simplify_meshes_keeps_valid_faces():
    from vla_structppo.envs.mesh_lod import simplify_meshes

    env = make(1, task="drawer-open-v3")
    try:
        model = env._inner.envs[0]._raw.model
        counts = model.mesh_facenum.copy()
        before, after = simplify_meshes(model, 0.05)
        assert before == counts.sum() and after == model.mesh_facenum.sum() < before
        for m in range(model.nmesh):
            f0, nf, nv = model.mesh_faceadr[m], model.mesh_facenum[m], model.mesh_vertnum[m]
            faces = model.mesh_face[f0:f0 + nf]
            assert nf >= 1 and faces.min() >= 0 and faces.max() < nv
            assert ((faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])).all()
        assert simplify_meshes(model, 0.0) == (after, after)  # 0 = leave the meshes alone
        assert simplify_meshes(model, 0.05) == (after, after)  # idempotent: a second renderer changes nothing
    finally:
        env.close()


def test_action_repeat_holds_the_action_and_sums_rewards():
    """One step of an action_repeat=3 env == three steps of a plain env with the same action: same state,
    rewards summed, one picture, episode length counted in actions."""
    plain, held = make(1, action_repeat=1, state_obs=True), make(1, action_repeat=3, state_obs=True,
                                                                 max_episode_steps=4, terminate_on_success=False)
    try:
        plain.reset(seed=4)
        held.reset(seed=4)
        bins = np.array([[200, 60, 140, 255]])
        for _ in range(3):
            total = 0.0
            for _ in range(3):
                obs_p, r, *_ = plain.step(bins)
                total += float(r[0])
            obs_h, r_h, _, truncated, info = held.step(bins)
            np.testing.assert_array_equal(obs_h["state"], obs_p["state"])
            np.testing.assert_array_equal(obs_h["image"], obs_p["image"])
            assert float(r_h[0]) == pytest.approx(total, rel=1e-12)
        _, _, _, truncated, info = held.step(bins)
        assert truncated.all() and info["episode_length"].tolist() == [4]
    finally:
        plain.close()
        held.close()


def test_expert_succeeds_with_action_repeat_in_a_third_of_the_decisions():
    env = make(4, task="drawer-open-v3", observation="state", action_repeat=3, max_episode_steps=50,
               reward="success")
    try:
        first = _expert_first_episodes(env, seed=300, max_steps=50)
        lengths = first["episode_length"]
        assert first["success"].all() and lengths.max() <= 35, lengths  # ~30 decisions instead of ~90 steps
        assert first["episode_return"].tolist() == [1.0] * 4  # the sparse reward is paid once
    finally:
        env.close()
