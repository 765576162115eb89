"""Push a run to the Hub and start from one, without the Hub.

Push: the client's upload calls are patched and we assert exactly what would be sent (files, model card,
token nowhere); with an unreachable endpoint the push fails cleanly and the run dir is untouched. Pull:
a real local Hub mirror (``olah``, serving a plain git repo of the pushed files) answers the real
huggingface_hub client in a child process (``HF_ENDPOINT`` is read when huggingface_hub is imported).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import QUIET
from PIL import Image

from vla_structppo.checkpoints import HubError, parse_hf_uri, validate_repo_id
from vla_structppo.config import load_config
from vla_structppo.hub import model_card, push_run, stage_run

D, K = 7, 256
REPO = "test-org/tiny-vla-ppo"
RELEASE_FILES = {
    "README.md", "config.yaml", "adapter_model.safetensors", "adapter_config.json", "action_tokenizer.json",
    "value_head.safetensors", "advantage_head.safetensors", "processor_config.json", "tokenizer.json",
    "tokenizer_config.json", "eval/results.json", "eval/results.md", "plots/credit_000002.png",
}
RESULTS = {
    "checkpoint": "checkpoints/last", "env": {"id": "structured", "task": ""}, "deterministic": True, "seed": 1000000,
    "num_episodes": 20,
    "tasks": {"reach": {"success_rate": 0.65, "ci95": [0.433, 0.819], "episodes": 20, "successes": 13,
                        "mean_length": 1.0, "mean_return": -0.4},
              "push": {"success_rate": 0.25, "ci95": [0.112, 0.469], "episodes": 20, "successes": 5,
                       "mean_length": 1.0, "mean_return": -0.9}},
    "overall": {"success_rate": 0.45, "ci95": [0.306, 0.603], "episodes": 40, "successes": 18, "mean_length": 1.0,
                "mean_return": -0.65},
    "command": "vla-structppo eval runs/tiny/config.yaml", "wall_s": 3.2,
}


def vla_overrides(path: Path, *extra: str) -> list[str]:
    return ["policy.type=vla", f"model.name_or_path={path}", "env.observation=image", f"env.action_dims={D}",
            f"env.num_bins={K}", "env.structured.horizon=1", "env.structured.num_goals=1", *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llava) -> dict[str, Path]:
    """A real PPO run of a tiny VLA (2 checkpoints) with a fake-but-schema-valid eval and one plot."""
    from vla_structppo.train.ppo import train

    root = tmp_path_factory.mktemp("hub")
    tiny = tiny_llava
    cfg = load_config(None, vla_overrides(
        tiny, "env.num_envs=4", "ppo.num_steps=2", "ppo.total_timesteps=16", "ppo.num_minibatches=2",
        "ppo.num_epochs=1", "ppo.learning_rate=1e-2", f"output_dir={root}", "name=run", *QUIET,
        "logging.checkpoint_every=1", "logging.keep_checkpoints=5"))
    run_dir = train(cfg).run_dir
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "results.json").write_text(json.dumps(RESULTS))
    (run_dir / "eval" / "results.md").write_text("| task | success |\n|---|---|\n| reach | 0.65 |\n")
    (run_dir / "plots").mkdir()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(run_dir / "plots" / "credit_000002.png")
    return {"run": run_dir, "tiny": tiny}


def tree(directory: Path) -> dict[str, str]:
    """Every entry under ``directory``: file -> sha256, symlink -> its target (byte-identical check)."""
    out = {}
    for p in sorted(directory.rglob("*")):
        rel = str(p.relative_to(directory))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class FakeHub:
    """Records what HfApi would send; reads each file while the staging dir still exists."""

    def __init__(self, monkeypatch):
        from huggingface_hub import HfApi

        self.calls: list[tuple] = []
        self.sent: dict[str, bytes] = {}
        hub = self

        def create_repo(api, repo_id, **kw):
            hub.calls.append(("create_repo", repo_id, kw, api.token))
            return f"https://huggingface.co/{repo_id}"

        def create_branch(api, repo_id, **kw):
            hub.calls.append(("create_branch", repo_id, kw, api.token))

        def create_commit(api, repo_id, operations, **kw):
            ops = list(operations)
            hub.calls.append(("create_commit", repo_id, kw, api.token))
            for op in ops:
                hub.sent[op.path_in_repo] = Path(op.path_or_fileobj).read_bytes()

            class Info:
                commit_url = f"https://huggingface.co/{repo_id}/commit/abc123"

            return Info()

        for name, fn in (("create_repo", create_repo), ("create_branch", create_branch),
                         ("create_commit", create_commit)):
            monkeypatch.setattr(HfApi, name, fn)


def card_metadata(readme: bytes) -> dict:
    text = readme.decode()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


# -- push ----------------------------------------------------------------------------------------------------
def test_push_sends_exactly_the_release_files_and_a_valid_card(run, monkeypatch, tmp_path):
    run_dir = run["run"]
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    hub = FakeHub(monkeypatch)
    before = tree(run_dir)
    url = push_run(run_dir, REPO, private=True)
    assert url.endswith("/commit/abc123")
    assert [c[0] for c in hub.calls] == ["create_repo", "create_commit"]
    assert hub.calls[0][2]["private"] is True and hub.calls[0][2]["exist_ok"] is True
    assert set(hub.sent) == RELEASE_FILES  # no trainer_state.pt / rank_*.pt / peft's README
    last = (run_dir / "checkpoints" / "last").resolve()
    for name in ("adapter_model.safetensors", "action_tokenizer.json", "value_head.safetensors", "config.yaml"):
        assert hub.sent[name] == (last / name).read_bytes()
    assert hub.sent["eval/results.json"] == (run_dir / "eval" / "results.json").read_bytes()
    assert tree(run_dir) == before

    meta = card_metadata(hub.sent["README.md"])
    assert meta["library_name"] == "peft"
    assert "base_model" not in meta  # a local base dir is no Hub id: the body says so instead
    assert {"vla", "robotics", "reinforcement-learning", "ppo", "structured-advantage", "structured"} <= set(meta["tags"])
    (index,) = meta["model-index"]
    assert index["name"] == "tiny-vla-ppo"
    got = {r["dataset"]["config"]: r for r in index["results"]}
    assert set(got) == set(RESULTS["tasks"])
    for task, row in RESULTS["tasks"].items():
        (metric,) = got[task]["metrics"]
        assert metric["type"] == "success_rate" and metric["value"] == row["success_rate"]
        assert metric["args"]["ci95"] == row["ci95"] and metric["args"]["episodes"] == row["episodes"]
        assert got[task]["task"]["type"] == "reinforcement-learning"
        assert got[task]["dataset"]["type"] == "structured" and got[task]["dataset"]["name"] == f"structured {task}"
    body = hub.sent["README.md"].decode().split("---\n", 2)[2]
    recorded = (run_dir / "command.txt").read_text().strip() if (run_dir / "command.txt").is_file() else None
    assert (recorded or "vla-structppo train config.yaml") in body and f"init_from=hf://{REPO}" in body
    assert "| reach | 0.650 | [0.433, 0.819] | 13 / 20 |" in body
    assert str(run["tiny"]) in body  # where the (local) base model was

    # a branch, an explicit older checkpoint
    hub.calls.clear()
    push_run(run_dir, REPO, revision="v1", checkpoint="000001", commit_message="first")
    assert [c[0] for c in hub.calls] == ["create_repo", "create_branch", "create_commit"]
    assert hub.calls[1][2]["branch"] == "v1" and hub.calls[2][2]["revision"] == "v1"
    assert hub.calls[2][2]["commit_message"] == "first"
    assert hub.sent["adapter_model.safetensors"] == (run_dir / "checkpoints/000001/adapter_model.safetensors").read_bytes()


def test_card_names_a_hub_base_model(run):
    from vla_structppo.config import config_from_yaml_text

    cfg = config_from_yaml_text((run["run"] / "config.yaml").read_text())
    cfg.model.name_or_path = "openvla/openvla-7b"
    meta = card_metadata(model_card(cfg, REPO, None, ["adapter_config.json"]).encode())
    assert meta["base_model"] == "openvla/openvla-7b" and "model-index" not in meta


def test_bad_input_fails_before_anything_is_sent(run, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    hub = FakeHub(monkeypatch)
    for bad in ("noslash", "a/b/c", "org/", "-org/name", "org/na me", "org/name--x"):
        with pytest.raises(HubError, match="not a Hub model id"):
            push_run(run["run"], bad)
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(HubError, match="has no checkpoint"):
        push_run(empty, REPO)
    with pytest.raises(HubError, match="no such checkpoint dir"):
        push_run(run["run"], REPO, checkpoint="000009")
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # neither HF_TOKEN nor a saved login
    with pytest.raises(HubError, match="no Hugging Face token: log in with `hf auth login` or set HF_TOKEN"):
        push_run(run["run"], REPO)
    assert hub.calls == []
    assert parse_hf_uri("hf://org/name@v1") == ("org/name", "v1") and parse_hf_uri("hf://org/name") == ("org/name", None)
    assert validate_repo_id("org/name.v2_x") == "org/name.v2_x"


def main_push(run_dir: str, args: list[str]) -> None:
    from vla_structppo.cli import main

    main(["push", run_dir, *args])


def test_cli_args_are_parsed_strictly(run, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    hub = FakeHub(monkeypatch)
    for args, msg in ((["repo_id=org/x", "privat=true"], "unknown key 'privat'; valid keys: repo_id, private"),
                      (["repo_id=org/x", "private=yes"], "must be true or false"),
                      (["private=true"], "needs repo_id"), (["org/x"], "must look like key=value")):
        with pytest.raises(SystemExit) as exc:
            main_push(str(run["run"]), args)
        assert exc.value.code == 2 and msg in capsys.readouterr().err
    main_push(str(run["run"]), [f"repo_id={REPO}", "private=false", "checkpoint=000002"])
    assert hub.calls[0][2]["private"] is False and "pushed" in capsys.readouterr().out


def test_token_is_never_written(run, monkeypatch, tmp_path, caplog, capfd):
    secret = "hf_" + secrets.token_hex(16)
    monkeypatch.setenv("HF_TOKEN", secret)
    hub = FakeHub(monkeypatch)
    with caplog.at_level(logging.DEBUG):
        main_push(str(run["run"]), [f"repo_id={REPO}"])
    assert all(c[3] == secret for c in hub.calls)  # the client got it ...
    needle = secret.encode()
    assert set(hub.sent) == RELEASE_FILES and not any(needle in b for b in hub.sent.values())  # ... nothing sent has it
    assert not [p for p in run["run"].rglob("*") if p.is_file() and needle in p.read_bytes()]
    out, err = capfd.readouterr()
    assert secret not in out + err + caplog.text

    # a run file that holds the token (a pasted command) is refused, not uploaded
    copy = tmp_path / "leaky"
    shutil.copytree(run["run"], copy, symlinks=True)
    (copy / "eval" / "results.md").write_text(f"ran with HF_TOKEN={secret}\n")
    hub.calls.clear()
    with pytest.raises(HubError, match=r"your Hub token is in .*results.md") as exc:
        push_run(copy, REPO)
    assert secret not in str(exc.value) and [c[0] for c in hub.calls] == []
    assert not list(tmp_path.glob(".vla-structppo-push-*"))  # the staging dir went away with the error
    # a token pasted into the command the run was started with: the card's reproduce line would carry it;
    # the refusal names command.txt, the file to fix (it used to blame the generated README.md)
    (copy / "eval" / "results.md").write_text("clean\n")
    (copy / "command.txt").write_text(f"HF_TOKEN={secret} vla-structppo train recipe.yaml\n")
    with pytest.raises(HubError, match=r"your Hub token is in \[.*leaky/command.txt'\]; remove it from that file"):
        push_run(copy, REPO)

    from vla_structppo.hub import _contains

    blob = tmp_path / "blob"
    blob.write_bytes(b"x" * 10 + needle + b"y" * 10)
    assert all(_contains(blob, needle, chunk=c) for c in (3, 7, 16, 1 << 20))  # found across chunk edges
    assert not _contains(blob, needle[:-1] + b"!", chunk=7)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(endpoint: str, tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]), **extra)
    return env


NO_NETWORK = """
import json, sys
from vla_structppo.checkpoints import HubError, resolve
from vla_structppo.cli import main
out = {}
try:
    resolve("hf://test-org/tiny-vla-ppo")
except HubError as err:
    out["pull"] = str(err)
print(json.dumps(out))
sys.stdout.flush()
main(["push", sys.argv[1], "repo_id=test-org/tiny-vla-ppo"])
"""


def test_push_and_pull_without_network_fail_cleanly(run, tmp_path):
    secret = "hf_" + secrets.token_hex(16)
    before = tree(run["run"])
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", NO_NETWORK, str(run["run"])], capture_output=True, text=True,
                          env=child_env(f"http://127.0.0.1:{free_port()}", tmp_path, HF_TOKEN=secret), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and secret not in proc.stdout + proc.stderr
    assert "push to test-org/tiny-vla-ppo failed while creating the repo" in proc.stderr
    assert "is unchanged" in proc.stderr and "Retry: vla-structppo push" in proc.stderr
    assert "cannot download hf://test-org/tiny-vla-ppo" in json.loads(proc.stdout.splitlines()[0])["pull"]
    assert tree(run["run"]) == before
    assert not list(run["run"].parent.glob(".vla-structppo-push-*"))
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "hf-home").exists() or secret.encode() not in b"".join(
        p.read_bytes() for p in (tmp_path / "hf-home").rglob("*") if p.is_file())


# -- pull from a real local Hub mirror -------------------------------------------------------------------------
def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main",
                    *args], cwd=cwd, check=True, capture_output=True)


def observations(n: int = 3) -> dict:
    from vla_structppo.envs import make_env

    cfg = load_config(None, ["env.observation=image", "policy.type=vla", "model.name_or_path=x",
                             f"env.action_dims={D}", f"env.num_bins={K}", "env.structured.horizon=3"])
    obs, _ = make_env(cfg.env, n, seed=0).reset(seed=0)
    obs["instruction"] = np.array(["go", "move the point to the goal", "reach it"][:n])
    return obs


def greedy(tiny: Path, init_from: str) -> tuple[torch.Tensor, torch.Tensor]:
    from helpers import vla_policy

    policy = vla_policy(load_config(None, vla_overrides(tiny, f"init_from={init_from}")))
    with torch.no_grad():
        out = policy.act(policy.prepare(observations()), deterministic=True)
    return out.actions, out.logp


PULL = """
import json, sys, torch
sys.path.insert(0, sys.argv[3])
from test_hub import greedy
from vla_structppo.checkpoints import HubError, resolve
tiny, out_file = sys.argv[1], sys.argv[2]
res = {"main": str(resolve("hf://test-org/tiny-vla-ppo")),
       "v1": str(resolve("hf://test-org/tiny-vla-ppo@v1"))}
try:
    resolve("hf://test-org/no-such-repo")
except HubError as err:
    res["missing"] = str(err)
acts = {rev: greedy(__import__("pathlib").Path(tiny), uri) for rev, uri in
        (("main", "hf://test-org/tiny-vla-ppo"), ("v1", "hf://test-org/tiny-vla-ppo@v1"))}
torch.save(acts, out_file)
print(json.dumps(res))
"""


@pytest.mark.hub
@pytest.mark.skipif(importlib.util.find_spec("olah") is None or shutil.which("git") is None,
                    reason="the local Hub mirror test needs git and `pip install olah==0.5.4`")
def test_pull_and_init_from_a_local_hub_mirror(run, tmp_path):
    t0 = time.monotonic()
    run_dir = run["run"]
    # the mirror's repo: main = the pushed last checkpoint, branch v1 = checkpoint 000001 (a plain git repo:
    # olah serves blobs that are not LFS pointers as regular files, so no git-lfs)
    mirrors = tmp_path / "mirrors"
    repo = mirrors / "models" / "test-org" / "tiny-vla-ppo"
    repo.mkdir(parents=True)
    git(repo, "init")
    stage_run(run_dir, REPO, repo, checkpoint="000001")
    git(repo, "add", "-A")
    git(repo, "commit", "-m", "checkpoint 000001")
    git(repo, "branch", "v1")
    for p in repo.iterdir():
        if p.name != ".git":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    pushed = stage_run(run_dir, REPO, repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-m", "last checkpoint")

    port = free_port()
    conf = tmp_path / "olah.toml"
    conf.write_text(f"""[basic]
host = "127.0.0.1"
port = {port}
repos-path = "{tmp_path / 'olah-repos'}"
mirror-scheme = "http"
mirror-netloc = "127.0.0.1:{port}"
mirror-lfs-netloc = "127.0.0.1:{port}"
mirrors-path = ["{mirrors}"]

[accessibility]
offline = true
""")
    server = subprocess.Popen([sys.executable, "-m", "olah.server", "-c", str(conf), "--log-path",
                               str(tmp_path / "olah-logs")], cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=child_env("", tmp_path))
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):  # up in ~0.5 s
            try:
                urllib.request.urlopen(f"{endpoint}/api/models/test-org/tiny-vla-ppo/revision/main", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail("olah exited at start")
                time.sleep(0.1)
        out_file = tmp_path / "acts.pt"
        proc = subprocess.run([sys.executable, "-c", PULL, str(run["tiny"]), str(out_file), str(Path(__file__).parent)],
                              capture_output=True, text=True, env=child_env(endpoint, tmp_path), timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        server.terminate()
        server.wait(timeout=10)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    for rev, ckpt in (("main", "000002"), ("v1", "000001")):
        snap = Path(res[rev])
        assert snap.is_relative_to(tmp_path / "hf-home")  # the Hugging Face cache, not the mirror's dir
        files = {str(p.relative_to(snap)) for p in snap.rglob("*") if p.is_file()}
        assert files == set(pushed)
        assert (snap / "adapter_model.safetensors").read_bytes() == \
            (run_dir / "checkpoints" / ckpt / "adapter_model.safetensors").read_bytes()
    assert "no such repo" in res["missing"]

    got = torch.load(out_file)
    for rev, ckpt in (("main", "000002"), ("v1", "000001")):
        actions, logp = greedy(run["tiny"], str(run_dir / "checkpoints" / ckpt))
        assert torch.equal(got[rev][0], actions)
        assert torch.allclose(got[rev][1], logp, atol=1e-6)
    assert not torch.allclose(got["main"][1], got["v1"][1])  # the revision really selected another adapter
    assert time.monotonic() - t0 < 60
