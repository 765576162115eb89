"""Run directories a user can trust, and bad inputs caught early — as the user meets them, through the CLI.

Each test reproduces one item of the run-directory issue; the last one drives random sequences of train /
kill / resume / same-name re-run / eval and checks the run dir's guarantees after every step.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import QUIET

from vla_structppo.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICK = [*QUIET, "env.num_envs=8", "ppo.num_steps=4", "ppo.num_minibatches=2", "ppo.num_epochs=2",
         "env.structured.num_goals=4"]


def run(tmp: Path, *args: str, verb: str = "train") -> None:
    main([verb, f"output_dir={tmp}", *QUICK, *args])


def cli_error(capsys, *argv: str) -> str:
    """Run the CLI expecting a user error: exit code 2, one message, no traceback."""
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "vla-structppo: error:" in err
    return err


def tree(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink()
                                    else f"-> {os.readlink(p)}" if p.is_symlink() else "dir")
            for p in sorted(d.rglob("*")) if p.name != ".lock"}


# -- 1-3: data loss and silent mix-ups -----------------------------------------------------------------------
def test_a_name_in_use_is_refused_and_the_old_run_untouched(tmp_path, capsys):
    run(tmp_path, "name=same", "ppo.total_timesteps=128", "logging.checkpoint_every=1")
    before = tree(tmp_path / "same")
    err = cli_error(capsys, "train", f"output_dir={tmp_path}", *QUICK, "name=same", "ppo.total_timesteps=64")
    assert "already holds a run (checkpoints up to 000004, 4 metrics lines)" in err
    assert "resume=" in err and "overwrite=true" in err and "name=" in err
    assert tree(tmp_path / "same") == before


def test_overwrite_replaces_only_once_the_new_run_starts(tmp_path, capsys):
    run(tmp_path, "name=ow", "ppo.total_timesteps=128")
    before = tree(tmp_path / "ow")
    # the replacement fails to start (no such model): nothing of the old run is lost
    cli_error(capsys, "train", f"output_dir={tmp_path}", *QUICK, "name=ow", "overwrite=true", "policy.type=vla",
              "env.observation=image", f"model.name_or_path={tmp_path / 'no-model'}")
    assert tree(tmp_path / "ow") == before
    run(tmp_path, "name=ow", "overwrite=true", "ppo.total_timesteps=64")
    lines = (tmp_path / "ow" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and sorted(p.name for p in (tmp_path / "ow" / "checkpoints").glob("0*")) == ["000002"]


def test_one_writer_at_a_time(tmp_path, capsys):
    from vla_structppo.checkpoints.rundir import RunLock

    lock = RunLock(tmp_path / "busy")  # another process would hold this while it writes
    try:
        err = cli_error(capsys, "train", f"output_dir={tmp_path}", *QUICK, "name=busy", "ppo.total_timesteps=64")
        assert f"another process (pid {os.getpid()}) is writing to" in err
    finally:
        lock.release()
    run(tmp_path, "name=busy", "ppo.total_timesteps=64")  # free again


def test_a_failed_resume_writes_nothing(tmp_path, capsys):
    run(tmp_path, "name=r", "ppo.total_timesteps=128", "logging.checkpoint_every=2")
    before = tree(tmp_path / "r")
    err = cli_error(capsys, "train", f"output_dir={tmp_path}", *QUICK, "name=r", f"resume={tmp_path / 'r'}",
                    "policy.hidden_size=32", "ppo.total_timesteps=256")
    assert "policy.hidden_size=32 (the run has 64)" in err and "init_from=" in err
    assert tree(tmp_path / "r") == before  # config.yaml and command.txt untouched


def test_resume_continues_in_the_dir_it_resumes(tmp_path, capsys):
    run(tmp_path, "name=a", "ppo.total_timesteps=128", "logging.checkpoint_every=2")
    # a recipe (or the default) names another run: the resumed run still continues in runs/a
    main(["train", f"output_dir={tmp_path}", *QUICK, "name=quickstart", f"resume={tmp_path / 'a'}",
          "ppo.total_timesteps=256"])
    assert not (tmp_path / "quickstart").exists()
    lines = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["charts/update"] for r in lines] == [1, 2, 3, 4, 5, 6, 7, 8]
    # without a recipe: the run's own settings; a finished run says so and changes nothing
    before = tree(tmp_path / "a")
    main(["train", f"resume={tmp_path / 'a'}"])
    assert "already finished (update 8 of 8); nothing to do" in capsys.readouterr().out
    assert tree(tmp_path / "a") == before


# -- 4-5: errors that name the problem and the fix, before anything is written ---------------------------
def test_a_missing_local_model_is_not_taken_for_a_hub_id(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()  # models/nope: a typo under a local dir
    t0 = time.monotonic()
    err = cli_error(capsys, "train", "policy.type=vla", "env.observation=image", "model.name_or_path=models/nope",
                    *QUICK)
    assert "model.name_or_path='models/nope': no such directory" in err and time.monotonic() - t0 < 10
    assert not (tmp_path / "runs").exists()


def test_broken_model_files_fail_in_the_preflight(tmp_path, capsys, tiny_llava):
    vla = ["policy.type=vla", "env.observation=image", "env.num_bins=256", f"output_dir={tmp_path / 'runs'}", *QUICK]

    def broken(name: str, damage) -> str:
        d = tmp_path / name
        subprocess.run(["cp", "-r", str(tiny_llava), str(d)], check=True)  # damage a copy, never the shared one
        damage(d)
        return cli_error(capsys, "train", *vla, f"model.name_or_path={d}", f"name={name}")

    err = broken("garbage-config", lambda d: (d / "config.json").write_text("{not json"))
    assert "garbage-config/config.json is not valid JSON" in err
    err = broken("no-weights", lambda d: (d / "model.safetensors").unlink())
    assert "no weights (model.safetensors" in err
    err = broken("truncated", lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5000]))
    assert "truncated/model.safetensors is truncated" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no run dir written


@pytest.mark.parametrize("victim", ["trainer_state.pt", "rank_0.pt", "policy.safetensors"])
def test_a_damaged_checkpoint_names_the_file_and_an_intact_one(victim, tmp_path, capsys):
    run(tmp_path, "name=d", "ppo.total_timesteps=128", "logging.checkpoint_every=2", "logging.keep_checkpoints=0")
    damaged = tmp_path / "d" / "checkpoints" / "000004" / victim
    damaged.write_bytes(damaged.read_bytes()[: len(damaged.read_bytes()) // 2])
    err = cli_error(capsys, "train", f"resume={tmp_path / 'd'}", "ppo.total_timesteps=256")
    assert f"000004/{victim}" in err
    assert "the newest intact earlier checkpoint is" in err and "000002" in err


def test_a_changed_shape_on_init_from_names_the_field(tmp_path, capsys):
    run(tmp_path, "name=src", "ppo.total_timesteps=64")
    err = cli_error(capsys, "train", f"output_dir={tmp_path}", *QUICK, "name=dst", f"init_from={tmp_path / 'src'}",
                    "policy.hidden_size=32", "ppo.total_timesteps=64")
    assert "policy.hidden_size=32 (checkpoint: 64)" in err
    err = cli_error(capsys, "train", f"output_dir={tmp_path}", *QUICK, "name=dst2", f"init_from={tmp_path / 'src'}",
                    "env.num_bins=5", "ppo.total_timesteps=64")
    assert "env.num_bins=5 (checkpoint: 11)" in err


# -- 6-9: validation gaps, NaN abort, push token, small things -----------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("logging.log_every=0", "logging.log_every must be >= 1"),
    ("env.structured.num_goals=-1", "env.structured.num_goals must be >= 0"),
    ("policy.num_layers=0", "policy.num_layers must be >= 1"),
    ("ppo.learning_rate=nan", "ppo.learning_rate must be a finite number"),
    ("ppo.learning_rate=inf", "ppo.learning_rate must be a finite number"),
    ("env.structured.noise_std=-1", "env.structured.noise_std must be a finite number >= 0"),
    ("head.bin_embed_dim=0", "head.bin_embed_dim must be >= 1"),
    ("env.structured.max_move=0", "env.structured.max_move must be > 0"),
    ("name=", "override 'name=' gives no value: write name=VALUE"),
    ("name=../../x", "name='../../x' must be a plain directory name"),
])
def test_bad_values_fail_before_anything_runs(override, message, tmp_path, capsys):
    err = cli_error(capsys, "train", f"output_dir={tmp_path}", override)
    assert message in err
    assert not any(tmp_path.iterdir())


def test_an_empty_recipe_is_refused_by_name(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert f"{empty}: the recipe sets nothing" in cli_error(capsys, "train", str(empty))


def test_swapped_argument_order_says_the_recipe_comes_first(capsys):
    err = cli_error(capsys, "train", "ppo.learning_rate=1e-3", "recipes/structured/quickstart.yaml")
    assert "the recipe comes first" in err


def test_the_nan_abort_is_a_clean_error_naming_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    from vla_structppo.train import ppo_update

    real = ppo_update.ppo_policy_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, m = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 8 else loss), m  # 4 calls per update: updates 1-2 healthy

    monkeypatch.setattr(ppo_update, "ppo_policy_loss", poisoned)
    with pytest.warns(UserWarning, match="non-finite"):
        err = cli_error(capsys, "train", f"output_dir={tmp_path}", *QUICK, "name=nan", "ppo.total_timesteps=256",
                        "logging.checkpoint_every=1", "ppo.max_nan_updates=2")
    assert "the last good checkpoint is" in err and "000002" in err  # updates 1-2 were healthy
    calls["n"] = 100  # non-finite from the first update: nothing good to point at
    with pytest.warns(UserWarning, match="non-finite"):
        err = cli_error(capsys, "train", f"output_dir={tmp_path}", *QUICK, "name=nan2", "ppo.total_timesteps=256",
                        "logging.checkpoint_every=1", "ppo.max_nan_updates=1")
    assert "no checkpoint was saved before it" in err


def test_a_half_written_metrics_line_does_not_block_resume(tmp_path):
    run(tmp_path, "name=m", "ppo.total_timesteps=128", "logging.checkpoint_every=2")
    metrics = tmp_path / "m" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"charts/update": 5, "losses/')  # killed mid-line
    with pytest.warns(UserWarning, match="dropped its last line"):
        main(["train", f"resume={tmp_path / 'm'}", "ppo.total_timesteps=192"])
    assert [json.loads(x)["charts/update"] for x in metrics.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


def test_an_unwritable_output_dir_is_a_clean_error(tmp_path, capsys):
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("")
    assert "cannot write the run dir" in cli_error(capsys, "train", f"output_dir={a_file}", *QUICK)
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root): permissions do not bite")
        assert "cannot write the run dir" in cli_error(capsys, "train", f"output_dir={locked}", *QUICK)
    finally:
        locked.chmod(0o700)


def test_a_cpu_run_without_omp_num_threads_gets_a_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    run(tmp_path, "name=omp", "ppo.total_timesteps=64", "device=cpu")
    assert "hint: OMP_NUM_THREADS is not set" in capsys.readouterr().err


# -- the run dir's guarantees under random sequences ---------------------------------------------------------
_TRAIN = [sys.executable, "-m", "vla_structppo", "train", *QUICK, "logging.checkpoint_every=1",
          "logging.keep_checkpoints=0"]


def _check_guarantees(run_dir: Path, reference: dict[int, dict], min_checkpoints: int) -> int:
    """Every checkpoint complete, ``last`` -> the newest one of this run, every metrics line of an update
    up to it present once and identical to an uninterrupted run's. Returns the newest update."""
    from vla_structppo.checkpoints import layout, read_config, verify

    ckpts = sorted((run_dir / "checkpoints").glob("0*"))
    assert len(ckpts) >= min_checkpoints, "a completed checkpoint was lost"
    for c in ckpts:
        verify(c, resume=True)
    newest = int(ckpts[-1].name) if ckpts else 0
    if ckpts:
        last = (run_dir / "checkpoints" / "last").resolve()
        assert last == ckpts[-1].resolve() and layout.checkpoint_kind(last) == "state"
        assert read_config(last).name == run_dir.name
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.endswith("}")]
    updates = [int(r["charts/update"]) for r in lines]
    assert updates == sorted(set(updates)) and set(range(1, newest + 1)) <= set(updates)
    for r in lines:
        assert {k: v for k, v in r.items() if not k.startswith(("time/", "charts/SPS"))} == reference[r["charts/update"]]
    return newest


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_train_kill_resume_rerun_sequences_keep_the_guarantees(seed, tmp_path):
    rng = random.Random(seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    total = ["ppo.total_timesteps=6400"]  # 200 updates, ~8 s after ~2.5 s of start-up: kills land mid-run
    ref_dir = tmp_path / "ref"
    subprocess.run([*_TRAIN, f"output_dir={ref_dir}", "name=x", *total], env=env, check=True, capture_output=True)
    reference = {int(r["charts/update"]): {k: v for k, v in r.items() if not k.startswith(("time/", "charts/SPS"))}
                 for r in map(json.loads, (ref_dir / "x" / "metrics.jsonl").read_text().splitlines())}
    out, run_dir, have = tmp_path / "runs", tmp_path / "runs" / "x", 0
    log: list[str] = []
    for _ in range(6):
        # mostly kills (of the first run, then of resumes), with re-runs under the same name and evals between
        op = rng.choice(["kill", "kill", "kill", "resume", "rerun", "eval"]) if run_dir.exists() else "kill"
        if op in ("train", "kill") and not run_dir.exists():
            args = [*_TRAIN, f"output_dir={out}", "name=x", *total]
        elif op == "rerun":  # the same name again: refused, nothing touched
            before = tree(run_dir)
            proc = subprocess.run([*_TRAIN, f"output_dir={out}", "name=x", "ppo.total_timesteps=64"], env=env,
                                  capture_output=True, text=True)
            assert proc.returncode == 2 and "already holds a run" in proc.stderr and tree(run_dir) == before
            log.append("rerun-refused")
            continue
        elif op == "eval":
            if have:
                subprocess.run([sys.executable, "-m", "vla_structppo", "eval", f"eval.checkpoint={run_dir}",
                                "eval.num_episodes=2", "eval.num_envs=2"], env=env, check=True, capture_output=True)
            continue
        else:  # resume (or kill a resume)
            if not have:
                continue  # nothing to resume yet
            args = [sys.executable, "-m", "vla_structppo", "train", f"resume={run_dir}"]
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if op == "kill":
            time.sleep(rng.uniform(1.0, 9.0))
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        if run_dir.exists() and (run_dir / "metrics.jsonl").exists():
            have = max(have, _check_guarantees(run_dir, reference, min_checkpoints=have))
        log.append(f"{op}->{have}")
    print(f"seed {seed}: {' '.join(log)}")
    if have:  # finish the run: it ends exactly where an uninterrupted one does
        subprocess.run([sys.executable, "-m", "vla_structppo", "train", f"resume={run_dir}"], env=env, check=True,
                       capture_output=True)
        assert _check_guarantees(run_dir, reference, min_checkpoints=have) == 200
