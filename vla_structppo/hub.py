"""Share a trained run on the Hugging Face Hub, and start from one: ``push_run`` / ``resolve_checkpoint``.

``push_run`` stages a copy of the run's release files (adapter or full model, heads, action tokenizer,
processor, resolved config, eval results, plots) plus a generated model card in a temporary dir and
sends them in ONE commit, so the Hub repo is never half-written and the run dir is never touched.
``resolve_checkpoint("hf://org/name[@revision]")`` downloads such a repo into the local Hub cache and
returns a dir that ``init_from`` accepts like a local checkpoint.

The token comes from huggingface_hub's usual sources (``HF_TOKEN``, the saved login) or the ``token``
argument; it is passed to the client only, never written to a file or a log, and a staged file that
contains it is refused. ``huggingface_hub`` is imported lazily: it reads ``HF_ENDPOINT`` at import time,
and ``vla-structppo train`` without ``hf://`` should not pay for the import.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "HF_SCHEME",
    "HubError",
    "main_push",
    "model_card",
    "parse_hf_uri",
    "push_run",
    "resolve_checkpoint",
    "stage_run",
    "validate_repo_id",
]

log = logging.getLogger(__name__)

HF_SCHEME = "hf://"
# resume-only state (optimizer moments, RNG, rollout buffers): large pickles no one loading the model needs;
# peft's own README is replaced by the generated card
EXCLUDED_CHECKPOINT_FILES = ("trainer_state.pt", "README.md")
EXCLUDED_CHECKPOINT_PATTERNS = (re.compile(r"^rank_\d+\.pt$"),)
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
FULL_MODEL_FILES = ("config.json", "model.safetensors")
# the heads are optional: an SFT checkpoint has none (PPO ones have value_head / advantage_head.safetensors)
REQUIRED_FILES = ("action_tokenizer.json", "config.yaml")
EVAL_FILES = ("results.json", "results.md")
RESULT_KEYS = ("success_rate", "ci95", "episodes")
# org/name, each part as the Hub allows (letters, digits, - _ .; no leading/trailing - or ., no '--' or '..')
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"^{_REPO_PART}/{_REPO_PART}$")
MIN_TOKEN_SCAN = 8
PUSH_KEYS = ("repo_id", "private", "revision", "checkpoint", "commit_message")
PUSH_USAGE = ("usage: vla-structppo push RUN_DIR repo_id=org/name [private=true|false] [revision=BRANCH] "
              "[checkpoint=NAME_OR_DIR] [commit_message=TEXT]")


class HubError(RuntimeError):
    """A push or pull that cannot proceed; the message says what failed and how to retry."""


# -- names ------------------------------------------------------------------------------------------------
def validate_repo_id(repo_id: str) -> str:
    """``org/name`` or raise :class:`HubError` (checked before anything is staged or sent)."""
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise HubError(f"repo_id={repo_id!r} is not a Hub model id: give org/name (letters, digits, '-', '_', "
                       "'.'; at most 96 characters each), e.g. repo_id=my-org/vla-structppo-reach")
    return repo_id


def parse_hf_uri(uri: str) -> tuple[str, str | None]:
    """``hf://org/name[@revision]`` -> ``(repo_id, revision or None)``."""
    if not uri.startswith(HF_SCHEME):
        raise HubError(f"{uri!r} is not a Hub checkpoint: write hf://org/name or hf://org/name@revision")
    rest = uri[len(HF_SCHEME):]
    repo_id, sep, revision = rest.partition("@")
    if sep and not revision:
        raise HubError(f"{uri!r}: empty revision after '@' (write hf://org/name@main or drop the '@')")
    return validate_repo_id(repo_id), revision or None


# -- what a push sends ------------------------------------------------------------------------------------
def _find_checkpoint(run_dir: Path, checkpoint: str | None) -> Path:
    if not run_dir.is_dir():
        raise HubError(f"run dir {str(run_dir)!r} does not exist")
    if checkpoint is None:
        ckpt = run_dir / "checkpoints" / "last"
        if not ckpt.exists():
            raise HubError(f"{run_dir} has no checkpoint (no checkpoints/last): train it first, or give "
                           "checkpoint=NAME for one of its checkpoints/ dirs")
    else:
        given = Path(checkpoint)
        ckpt = given if given.is_absolute() or given.exists() else run_dir / "checkpoints" / checkpoint
        if not ckpt.is_dir():
            found = sorted(p.name for p in (run_dir / "checkpoints").glob("*")) if (run_dir / "checkpoints").is_dir() else []
            raise HubError(f"checkpoint={checkpoint!r}: no such checkpoint dir ({ckpt}); {run_dir}/checkpoints has "
                           f"{found or 'nothing'}")
    return ckpt.resolve()


def _checkpoint_files(ckpt: Path) -> dict[str, Path]:
    """The checkpoint's release files (everything but the resume-only state), after checking it is complete."""
    names = {p.name for p in ckpt.iterdir() if p.is_file()}
    if set(ADAPTER_FILES) <= names:
        weights = ADAPTER_FILES
    elif set(FULL_MODEL_FILES) <= names:
        weights = FULL_MODEL_FILES
    else:
        raise HubError(f"{ckpt} holds no VLA weights (neither {list(ADAPTER_FILES)} nor {list(FULL_MODEL_FILES)}): "
                       "push shares VLA checkpoints written by vla-structppo train / sft")
    missing = [n for n in (*weights, *REQUIRED_FILES) if n not in names]
    if missing:
        raise HubError(f"checkpoint {ckpt} is incomplete: missing {missing}")
    files = {}
    for p in sorted(ckpt.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.name in EXCLUDED_CHECKPOINT_FILES:
            continue
        if any(pat.match(p.name) for pat in EXCLUDED_CHECKPOINT_PATTERNS):
            continue
        files[p.name] = p
    return files


def _load_results(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "eval" / "results.json"
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise HubError(f"{path} is not readable JSON ({err}); rerun vla-structppo eval or remove it") from None
    tasks = results.get("tasks") if isinstance(results, dict) else None
    if not isinstance(tasks, dict) or not tasks:
        raise HubError(f"{path} has no 'tasks' mapping (written by another version?); rerun vla-structppo eval")
    for name, row in tasks.items():
        bad = [k for k in RESULT_KEYS if not isinstance(row, dict) or k not in row]
        if bad:
            raise HubError(f"{path}: task {name!r} lacks {bad}; rerun vla-structppo eval")
    return results


def _read_config(ckpt: Path) -> Any:
    from .config import ConfigError, config_from_yaml_text

    try:
        return config_from_yaml_text((ckpt / "config.yaml").read_text())
    except (ConfigError, ValueError) as err:
        raise HubError(f"{ckpt / 'config.yaml'} cannot be read as a vla-structppo config: {err}") from None


def _hub_model_id(name: str | None) -> str | None:
    """``name`` when it names a Hub model (the card's ``base_model`` must be one), None for a local dir."""
    if not name or Path(name).expanduser().exists() or name.startswith(("/", ".", "~")):
        return None
    return name if re.match(rf"^(?:{_REPO_PART}/)?{_REPO_PART}$", name) else None


def _tag(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-")


def _fmt(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def model_card(cfg: Any, repo_id: str, results: dict[str, Any] | None, files: list[str],
               train_command: str | None = None) -> str:
    """The README.md of the pushed repo: YAML metadata (peft, base model, tags, model-index) + body."""
    from huggingface_hub import EvalResult, ModelCardData

    env_id, env_task = cfg.env.id, cfg.env.task
    base = _hub_model_id(cfg.model.name_or_path)
    lora = "adapter_config.json" in files
    tags = ["vla", "robotics", "reinforcement-learning", "ppo", "structured-advantage", "vla-structppo",
            _tag(env_id)]
    if env_task:
        tags.append(_tag(env_task))
    eval_results = []
    for task, row in (results or {}).get("tasks", {}).items():
        lo, hi = row["ci95"]
        dataset = env_id if task in ("", env_id) else f"{env_id} {task}"
        eval_results.append(EvalResult(
            task_type="reinforcement-learning", task_name="robotics", dataset_type=env_id, dataset_name=dataset,
            dataset_config=task or env_id, metric_type="success_rate", metric_value=float(row["success_rate"]),
            metric_name=f"success rate (95% CI {_fmt(lo)}-{_fmt(hi)}, {row['episodes']} episodes)",
            metric_args={"ci95": [float(lo), float(hi)], "episodes": int(row["episodes"]),
                         "deterministic": bool(results.get("deterministic", True))},  # type: ignore[union-attr]
        ))
    data = ModelCardData(library_name="peft" if lora else "transformers", base_model=base, tags=tags,
                         pipeline_tag="robotics", model_name=repo_id.split("/", 1)[1],
                         eval_results=eval_results or None)
    name = repo_id.split("/", 1)[1]
    where = f"`{env_id}`" + (f" task `{env_task}`" if env_task else "")
    kind = "A LoRA adapter (peft)" if lora else "A fully fine-tuned model"
    base_line = (f"[{base}](https://huggingface.co/{base})" if base else
                 f"a local model (`{cfg.model.name_or_path}`): set `model.name_or_path` to your copy of it when loading")
    cmd = train_command or ("vla-structppo train config.yaml" if base or not cfg.model.name_or_path
                            else "vla-structppo train config.yaml model.name_or_path=PATH/TO/BASE_MODEL")
    lines = [
        f"# {name}", "",
        f"{kind} for a vision-language-action model, fine-tuned with PPO and a structured (per-dimension + "
        f"pairwise) advantage by vla-structppo on {where}.", "",
        f"- base model: {base_line}",
        f"- credit assignment: `credit.mode={cfg.credit.mode}`, action tokens: {cfg.env.action_dims} dims x "
        f"{cfg.env.num_bins} bins (`action_tokenizer.json`)",
    ]
    heads = [f"`{f}`" for f in ("value_head.safetensors", "advantage_head.safetensors") if f in files]
    if heads:
        lines.append(f"- PPO heads (value, structured advantage) to continue training: {', '.join(heads)}")
    lines += ["", "## Evaluation", ""]
    if results:
        lines += [f"{results.get('num_episodes', '?')} episodes per task, seed {results.get('seed', '?')}, "
                  f"{'greedy' if results.get('deterministic', True) else 'sampled'} actions "
                  f"(checkpoint `{Path(str(results.get('checkpoint', '?'))).name}`).", "",
                  "| task | success rate | 95% CI | successes / episodes | mean length | mean return |",
                  "|---|---|---|---|---|---|"]
        rows = list(results["tasks"].items())
        if isinstance(results.get("overall"), dict) and len(rows) > 1:
            rows.append(("**overall**", results["overall"]))
        for task, row in rows:
            lo, hi = row.get("ci95", [None, None])
            lines.append(f"| {task or env_id} | {_fmt(row.get('success_rate'))} | [{_fmt(lo)}, {_fmt(hi)}] | "
                         f"{row.get('successes', '?')} / {row.get('episodes', '?')} | {_fmt(row.get('mean_length'), 1)} "
                         f"| {_fmt(row.get('mean_return'), 2)} |")
        if results.get("command"):
            lines += ["", f"Evaluated with `{results['command']}`."]
        lines += ["", "Full results: `eval/results.json`."]
    else:
        lines.append("Not evaluated (no `eval/results.json` in the run).")
    lines += [
        "", "## Reproduce", "",
        "The resolved config of this checkpoint is `config.yaml` in this repo"
        + (f" (it started from `init_from={cfg.init_from}`, which you need too)" if cfg.init_from else "") + ":", "",
        "```bash", cmd, "```",
        "", "## Use", "",
        "Start training or evaluation from it (the files download into the Hugging Face cache):", "",
        "```bash", f"vla-structppo train RECIPE init_from=hf://{repo_id}",
        f"vla-structppo train RECIPE init_from=hf://{repo_id}@REVISION   # a branch, tag or commit", "```", "",
        "```python", "from vla_structppo.hub import resolve_checkpoint", "",
        f'path = resolve_checkpoint("hf://{repo_id}")  # a local dir usable as init_from', "```", "",
        "## Files", "",
        *[f"- `{f}`" for f in sorted(files)],
    ]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"


def stage_run(run_dir: str | Path, repo_id: str, out_dir: str | Path, *, checkpoint: str | None = None) -> list[str]:
    """Copy the release files of ``run_dir`` and write the model card into ``out_dir``; returns the paths
    in the repo. Only reads the run dir."""
    return _stage(Path(run_dir), validate_repo_id(repo_id), Path(out_dir), checkpoint)[0]


def _link_or_copy(src: Path, dst: Path, atomic: bool) -> None:
    """Checkpoint files are written once under a temporary name and renamed, never rewritten in place, so a
    hard link is a frozen, free snapshot of them (a multi-GB full model is not copied, and a training run
    that prunes the checkpoint mid-push cannot pull it away). Anything else (eval results, plots) may be
    rewritten in place: copied. The upload only reads the staged files."""
    if atomic:
        try:
            os.link(src, dst)
            return
        except OSError:  # another filesystem, or links not allowed: copy
            pass
    shutil.copyfile(src, dst)


def _stage(run_dir: Path, repo_id: str, out: Path, checkpoint: str | None) -> tuple[list[str], Path]:
    ckpt = _find_checkpoint(run_dir, checkpoint)
    files: dict[str, Path] = dict(_checkpoint_files(ckpt))
    results = _load_results(run_dir)
    for name in EVAL_FILES:
        if (run_dir / "eval" / name).is_file():
            files[f"eval/{name}"] = run_dir / "eval" / name
    for png in sorted((run_dir / "plots").glob("*.png")) if (run_dir / "plots").is_dir() else []:
        files[f"plots/{png.name}"] = png
    cfg = _read_config(ckpt)
    recorded = run_dir / "command.txt"
    command = recorded.read_text().strip() if recorded.is_file() else None
    for rel, src in files.items():
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(src, dst, atomic=src.parent == ckpt)
    card = model_card(cfg, repo_id, results, [*files, "README.md"], command)
    (out / "README.md").write_text(card)
    return sorted([*files, "README.md"]), ckpt


# -- push -------------------------------------------------------------------------------------------------
def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _contains(path: Path, needle: bytes, chunk: int = 1 << 22) -> bool:
    """Streamed search (a full model is GBs), overlapping chunks so a match across a boundary is found."""
    tail = b""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            window = tail + block
            if needle in window:
                return True
            tail = window[max(0, len(window) - len(needle) + 1):]
    return False


def _refuse_token_in(staged: Path, paths: list[str], token: str | None) -> None:
    """Defence in depth: a file that contains the token (a pasted command line, a config field) is not sent."""
    if not token or len(token) < MIN_TOKEN_SCAN:  # a real token is ~37 chars; a 1-char test value is everywhere
        return
    leaks = [p for p in paths if _contains(staged / p, token.encode())]
    if leaks:
        raise HubError(f"refusing to upload: {leaks} contain your Hub token; remove it from those files in the run dir")


def push_run(run_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
             checkpoint: str | None = None, token: str | None = None, commit_message: str | None = None) -> str:
    """Upload a run's checkpoint (``checkpoints/last`` unless given), eval results, plots and a model card
    to ``repo_id`` in one commit; returns the commit URL. Raises :class:`HubError` with the fix."""
    repo_id = validate_repo_id(repo_id)
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HubError(f"run dir {str(run_dir)!r} does not exist")
    # staged beside the run (same filesystem: checkpoint files are hard-linked, not copied), else in /tmp;
    # removed on exit whatever happens, so nothing half-written stays behind
    parent = run_dir.resolve().parent
    where = str(parent) if os.access(parent, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix=".vla-structppo-push-", dir=where) as tmp:
        staged = Path(tmp)
        paths, ckpt = _stage(run_dir, repo_id, staged, checkpoint)
        from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token

        resolved = token or get_token()
        if not resolved:
            raise HubError("no Hugging Face token: log in with `hf auth login` or set HF_TOKEN (a write token), "
                           f"then rerun the push; {run_dir} is unchanged")
        _refuse_token_in(staged, paths, resolved)
        api = HfApi(token=resolved)
        ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(staged / p)) for p in paths]
        message = commit_message or f"Upload {run_dir.name} (checkpoint {ckpt.name}) with vla-structppo"
        step = "creating the repo"
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision and revision != "main":
                step = f"creating branch {revision!r}"
                api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
            step = f"committing {len(ops)} files"
            log.info("pushing %d files from %s to %s", len(ops), run_dir, repo_id)
            info = api.create_commit(repo_id, ops, commit_message=message, revision=revision, repo_type="model")
        except Exception as err:  # any client / network / HTTP failure: one message with the way out
            raise HubError(_push_failure(err, step, run_dir, repo_id, constants.ENDPOINT, resolved)) from None
    url = str(getattr(info, "commit_url", "") or f"{constants.ENDPOINT}/{repo_id}")
    log.info("pushed %s", url)
    return url


def _push_failure(err: Exception, step: str, run_dir: Path, repo_id: str, endpoint: str, token: str) -> str:
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403):
        hint = "the token is missing, invalid or read-only: use a write token (hf auth login / HF_TOKEN)"
    elif status == 404:
        hint = f"the repo or branch was not found: check repo_id={repo_id} and the revision"
    elif type(err).__name__ == "OfflineModeIsEnabled":
        hint = "HF_HUB_OFFLINE is set: unset it to push"
    elif status is not None:
        hint = f"the Hub at {endpoint} answered HTTP {status}"
    else:
        hint = f"check that {endpoint} is reachable (network, proxy, HF_ENDPOINT)"
    detail = _scrub(f"{type(err).__name__}: {err}".splitlines()[0], token)
    return (f"push to {repo_id} failed while {step} ({detail}); {hint}. The run dir {run_dir} is unchanged and no "
            f"commit was made (a push is one all-or-nothing commit). Retry: vla-structppo push {run_dir} "
            f"repo_id={repo_id}")


# -- pull -------------------------------------------------------------------------------------------------
def resolve_checkpoint(uri: str, cache_dir: str | Path | None = None) -> Path:
    """``hf://org/name[@revision]`` -> a local snapshot dir (adapter, action tokenizer, processor,
    config.yaml) usable as ``init_from``. Downloads into the Hugging Face cache (or ``cache_dir``)."""
    repo_id, revision = parse_hf_uri(uri)
    from huggingface_hub import constants, get_token, snapshot_download

    try:
        path = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, repo_type="model"))
    except Exception as err:  # not found / gated / offline / unreachable: say which and what to do
        name = type(err).__name__
        if name in ("RepositoryNotFoundError", "GatedRepoError"):
            hint = "no such repo, or it is private / gated: check the name and set HF_TOKEN"
        elif name == "RevisionNotFoundError":
            hint = f"the repo has no revision {revision!r} (a branch, tag or commit)"
        elif name in ("LocalEntryNotFoundError", "OfflineModeIsEnabled"):
            hint = f"it is not in the local cache and {constants.ENDPOINT} cannot be reached (or HF_HUB_OFFLINE is set)"
        else:
            hint = f"check that {constants.ENDPOINT} is reachable (network, proxy, HF_ENDPOINT)"
        detail = _scrub(str(err).splitlines()[0] if str(err) else "", get_token())
        raise HubError(f"cannot download {uri}: {hint} ({name}: {detail})") from None
    names = {p.name for p in path.iterdir()}
    if "action_tokenizer.json" not in names or not (set(ADAPTER_FILES) <= names or set(FULL_MODEL_FILES) <= names):
        raise HubError(f"{uri} is not a vla-structppo checkpoint (it lacks action_tokenizer.json and an adapter or "
                       "model weights); push one with vla-structppo push")
    return path


# -- CLI --------------------------------------------------------------------------------------------------
def _parse_push_args(args: list[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in args:
        key, sep, value = item.partition("=")
        if not sep:
            raise HubError(f"push argument {item!r} must look like key=value; valid keys: {', '.join(PUSH_KEYS)}")
        if key not in PUSH_KEYS:
            raise HubError(f"push: unknown key {key!r}; valid keys: {', '.join(PUSH_KEYS)}")
        if key in parsed:
            raise HubError(f"push: {key} given twice")
        if key == "private":
            low = value.lower()
            if low not in ("true", "false"):
                raise HubError(f"push: private={value!r} must be true or false")
            parsed[key] = low == "true"
        elif not value:
            raise HubError(f"push: {key}= is empty")
        else:
            parsed[key] = value
    if "repo_id" not in parsed:
        raise HubError(f"push needs repo_id=org/name\n{PUSH_USAGE}")
    return parsed


def main_push(run_dir: str, args: list[str]) -> None:
    """``vla-structppo push RUN_DIR repo_id=org/name [private=..] [revision=..] [checkpoint=..]``."""
    if any(a in ("-h", "--help") for a in [run_dir, *args]):
        print(PUSH_USAGE)
        return
    try:
        kw = _parse_push_args(args)
        url = push_run(run_dir, kw.pop("repo_id"), **kw)
    except HubError as err:
        print(f"vla-structppo: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"pushed {run_dir} -> {url}")
