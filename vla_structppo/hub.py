"""Share a trained run on the Hugging Face Hub: ``push_run``.

``push_run`` stages a copy of the run's release files (adapter or full model, heads, action tokenizer,
processor, resolved config, eval results, plots) plus a generated model card in a temporary dir and
sends them in ONE commit, so the Hub repo is never half-written and the run dir is never touched.
Pulling (``init_from: hf://org/name[@revision]``) is the checkpoint layer's
(:func:`vla_structppo.checkpoints.resolve`).

The token comes from huggingface_hub's usual sources (``HF_TOKEN``, the saved login) or the ``token``
argument; it is passed to the client only, never written to a file or a log, and a staged file that
contains it is refused. ``huggingface_hub`` is imported lazily: it reads ``HF_ENDPOINT`` at import time,
and ``vla-structppo train`` without ``hf://`` should not pay for the import.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .checkpoints import layout
from .checkpoints.locate import REPO_PART, HubError, base_model_of, read_config, validate_repo_id
from .checkpoints.store import CheckpointError
from .config import to_yaml

__all__ = ["PUSH_USAGE", "HubError", "model_card", "parse_push_args", "push_run", "stage_run"]

log = logging.getLogger(__name__)

# the heads are optional: an SFT checkpoint has none (PPO ones have value_head / advantage_head.safetensors)
EVAL_FILES = (layout.RESULTS_JSON, layout.RESULTS_MD)
RESULT_KEYS = ("success_rate", "ci95", "episodes")
MIN_TOKEN_SCAN = 8
PUSH_KEYS = ("repo_id", "private", "revision", "checkpoint", "commit_message")
PUSH_USAGE = ("usage: vla-structppo push RUN_DIR repo_id=org/name [private=true|false] [revision=BRANCH] "
              "[checkpoint=NAME_OR_DIR] [commit_message=TEXT]")


# -- what a push sends ------------------------------------------------------------------------------------
def _find_checkpoint(run_dir: Path, checkpoint: str | None) -> Path:
    if not run_dir.is_dir():
        raise HubError(f"run dir {str(run_dir)!r} does not exist")
    if checkpoint is None:
        ckpt = run_dir / layout.CHECKPOINTS / layout.LAST
        if not ckpt.exists():
            raise HubError(f"{run_dir} has no checkpoint (no {layout.CHECKPOINTS}/{layout.LAST}): train it first, or "
                           f"give checkpoint=NAME for one of its {layout.CHECKPOINTS}/ dirs")
    else:
        given = Path(checkpoint)
        ckpt = given if given.is_absolute() or given.exists() else run_dir / layout.CHECKPOINTS / checkpoint
        if not ckpt.is_dir():
            root = run_dir / layout.CHECKPOINTS
            found = sorted(p.name for p in root.glob("*")) if root.is_dir() else []
            raise HubError(f"checkpoint={checkpoint!r}: no such checkpoint dir ({ckpt}); {root} has "
                           f"{found or 'nothing'}")
    return ckpt.resolve()


def _checkpoint_files(ckpt: Path) -> dict[str, Path]:
    """The checkpoint's release files (everything but the resume-only state), after checking it is complete."""
    kind = layout.checkpoint_kind(ckpt)
    if kind not in ("adapter", "full"):
        raise HubError(f"{ckpt} holds no VLA weights (neither {list(layout.ADAPTER_FILES)} nor "
                       f"{list(layout.FULL_MODEL_FILES)} beside {layout.CONFIG}): push shares VLA checkpoints "
                       "written by vla-structppo train / sft")
    missing = [n for n in layout.policy_files(kind) if not (ckpt / n).is_file()]
    if missing:
        raise HubError(f"checkpoint {ckpt} is incomplete: missing {missing}")
    files = {}
    for p in sorted(ckpt.iterdir()):
        # resume-only state is large and no one loading the model needs it; the card replaces the README
        if not p.is_file() or p.name.startswith(".") or layout.is_resume_only(p.name) or p.name == layout.README:
            continue
        files[p.name] = p
    return files


def _load_results(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / layout.EVAL / layout.RESULTS_JSON
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


def _hub_model_id(name: str | None) -> str | None:
    """``name`` when it names a Hub model (the card's ``base_model`` must be one), None for a local dir."""
    if not name or Path(name).expanduser().exists() or name.startswith(("/", ".", "~")):
        return None
    return name if re.match(rf"^(?:{REPO_PART}/)?{REPO_PART}$", name) else None


def _tag(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-")


def _fmt(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


def model_card(cfg: Any, repo_id: str, results: dict[str, Any] | None, files: list[str],
               train_command: str | None = None, base_model: str | None = None) -> str:
    """The README.md of the pushed repo: YAML metadata (peft, base model, tags, model-index) + body.
    ``base_model``: the base VLA (followed through ``init_from``); ``cfg.model.name_or_path`` when None."""
    from huggingface_hub import ModelCardData

    env_id, env_task = cfg.env.id, cfg.env.task
    base_name = base_model or cfg.model.name_or_path
    base = _hub_model_id(base_name)
    lora = "adapter_config.json" in files
    tags = ["vla", "robotics", "reinforcement-learning", "ppo", "structured-advantage", "vla-structppo",
            _tag(env_id)]
    if env_task:
        tags.append(_tag(env_task))
    data = ModelCardData(library_name="peft" if lora else "transformers", base_model=base, tags=tags,
                         pipeline_tag="robotics", model_name=repo_id.split("/", 1)[1],
                         eval_results=_eval_results(env_id, results) or None)
    name = repo_id.split("/", 1)[1]
    where = f"`{env_id}`" + (f" task `{env_task}`" if env_task else "")
    kind = "A LoRA adapter (peft)" if lora else "A fully fine-tuned model"
    base_line = (f"[{base}](https://huggingface.co/{base})" if base else
                 f"a local model (`{base_name}`): set `model.name_or_path` to your copy of it when loading")
    cmd = train_command or ("vla-structppo train config.yaml" if base or not base_name
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
    lines += ["", "## Evaluation", "", *_evaluation_lines(results, env_id)]
    lines += [
        "", "## Reproduce", "",
        "The resolved config of this checkpoint is `config.yaml` in this repo"
        + (f" (it started from `init_from={cfg.init_from}`, which you need too)" if cfg.init_from else "") + ":", "",
        "```bash", cmd, "```",
        "", "## Use", "",
        "Start training or evaluation from it (the files download into the Hugging Face cache):", "",
        "```bash", f"vla-structppo train RECIPE init_from=hf://{repo_id}",
        f"vla-structppo train RECIPE init_from=hf://{repo_id}@REVISION   # a branch, tag or commit", "```", "",
        "```python", "from vla_structppo.checkpoints import load_agent, resolve", "",
        f'path = resolve("hf://{repo_id}")  # a local checkpoint dir, usable as init_from',
        f'agent, config = load_agent("hf://{repo_id}")  # the policy and heads, ready to act', "```", "",
        "## Files", "",
        *[f"- `{f}`" for f in sorted(files)],
    ]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"


def _eval_results(env_id: str, results: dict[str, Any] | None) -> list[Any]:
    """The model-index entries (one per task) of an evaluation's results."""
    from huggingface_hub import EvalResult

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
    return eval_results


def _evaluation_lines(results: dict[str, Any] | None, env_id: str) -> list[str]:
    """The card's evaluation table (or the line saying there is none)."""
    lines: list[str] = []
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
    return lines


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
        if (run_dir / layout.EVAL / name).is_file():
            files[f"{layout.EVAL}/{name}"] = run_dir / layout.EVAL / name
    plots = run_dir / layout.PLOTS
    for png in sorted(plots.glob("*.png")) if plots.is_dir() else []:
        files[f"{layout.PLOTS}/{png.name}"] = png
    try:
        cfg = read_config(ckpt)
        base, revision = base_model_of(ckpt, cfg)
    except CheckpointError as err:
        raise HubError(str(err)) from None
    recorded = run_dir / layout.COMMAND
    command = recorded.read_text().strip() if recorded.is_file() else None
    for rel, src in files.items():
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(src, dst, atomic=src.parent == ckpt)
    if base and not cfg.model.name_or_path:
        # the run found its base model through init_from, a path on this machine: the pushed config names the
        # base itself, so hf://repo loads anywhere (a copy replaces the link; the run dir is untouched)
        (out / layout.CONFIG).unlink()
        model = dataclasses.replace(cfg.model, name_or_path=base, revision=revision)
        (out / layout.CONFIG).write_text(to_yaml(dataclasses.replace(cfg, model=model)))
    card = model_card(cfg, repo_id, results, [*files, layout.README], command, base_model=base)
    (out / layout.README).write_text(card)
    return sorted([*files, layout.README]), ckpt


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


def _refuse_token_in(staged: Path, paths: list[str], token: str | None, run_dir: Path) -> None:
    """Defence in depth: a file that contains the token (a pasted command line, a config field) is not sent.
    The card is generated: when it holds the token, the run file it came from is named."""
    if not token or len(token) < MIN_TOKEN_SCAN:  # a real token is ~37 chars; a 1-char test value is everywhere
        return
    needle = token.encode()
    leaks = [p for p in paths if _contains(staged / p, needle)]
    if not leaks:
        return
    sources = {layout.README: [run_dir / layout.COMMAND, run_dir / layout.EVAL / layout.RESULTS_JSON]}
    named = []
    for p in leaks:
        origin = [str(f) for f in sources.get(p, []) if f.is_file() and _contains(f, needle)]
        named += origin or [str(run_dir / p) if (run_dir / p).exists() else p]
    raise HubError(f"refusing to upload: your Hub token is in {sorted(set(named))}; remove it from "
                   f"{'that file' if len(set(named)) == 1 else 'those files'} and push again")


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
        _refuse_token_in(staged, paths, resolved, run_dir)
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


# -- CLI --------------------------------------------------------------------------------------------------
def parse_push_args(args: list[str]) -> dict[str, Any]:
    """``key=value`` arguments of ``vla-structppo push`` (PUSH_KEYS), checked."""
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
