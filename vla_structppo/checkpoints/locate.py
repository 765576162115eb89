"""What a checkpoint is, where it is, and which base model it belongs to — each defined once.

* :func:`resolve` turns a checkpoint dir, a run dir or ``hf://org/name[@revision]`` into the local
  checkpoint dir (``checkpoints/last`` of a run, else its newest complete checkpoint; a Hub repo is
  downloaded into the Hugging Face cache).
* A checkpoint is a dir with ``config.yaml`` and policy weights (:func:`layout.checkpoint_kind`).
* :func:`base_model_of` is the base VLA a checkpoint's adapter belongs to: its ``model.name_or_path``,
  else that of the checkpoint it was initialised from, followed to the end of the ``init_from`` chain.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..config import ConfigError, TrainConfig, config_from_yaml_text
from ..errors import UserError
from ..files import (
    REPO_PART,
    CorruptFileError,
    check_json,
    check_safetensors,
    check_torch_file,
    hub_reachable,
    is_hub_repo_id,
)
from .layout import (
    ADAPTER_FILES,
    CHECKPOINTS,
    CONFIG,
    FULL_MODEL_FILES,
    LAST,
    POLICY_WEIGHTS,
    checkpoint_kind,
)
from .store import CheckpointError, list_checkpoints

__all__ = ["HF_SCHEME", "REPO_PART", "HubError", "base_model_of", "download", "parse_hf_uri", "pretrained_model",
           "read_config", "resolve", "run_dir_of", "validate_repo_id", "verify"]

HF_SCHEME = "hf://"
# org/name, each part as the Hub allows (letters, digits, - _ .; no leading/trailing - or ., no '--' or '..')
_REPO_ID = re.compile(rf"^{REPO_PART}/{REPO_PART}$")


class HubError(UserError, RuntimeError):
    """A push or pull that cannot proceed; the message says what failed and how to retry."""


# -- Hub addresses --------------------------------------------------------------------------------------
def validate_repo_id(repo_id: str) -> str:
    """``org/name`` or raise :class:`HubError` (checked before anything is staged, sent or fetched)."""
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise HubError(f"repo_id={repo_id!r} is not a Hub model id: give org/name (letters, digits, '-', '_', "
                       "'.'; at most 96 characters each), e.g. repo_id=my-org/vla-structppo-reach")
    return repo_id


def parse_hf_uri(uri: str) -> tuple[str, str | None]:
    """``hf://org/name[@revision]`` -> ``(repo_id, revision or None)``."""
    if not uri.startswith(HF_SCHEME):
        raise HubError(f"{uri!r} is not a Hub checkpoint: write hf://org/name or hf://org/name@revision")
    repo_id, sep, revision = uri[len(HF_SCHEME):].partition("@")
    if sep and not revision:
        raise HubError(f"{uri!r}: empty revision after '@' (write hf://org/name@main or drop the '@')")
    return validate_repo_id(repo_id), revision or None


def download(uri: str, cache_dir: str | Path | None = None) -> Path:
    """``hf://org/name[@revision]`` -> a local snapshot dir in the Hugging Face cache (or ``cache_dir``).

    ``huggingface_hub`` is imported here, lazily: it reads ``HF_ENDPOINT`` at import time, and runs
    without ``hf://`` should not pay for the import."""
    repo_id, revision = parse_hf_uri(uri)
    from huggingface_hub import constants, get_token, snapshot_download

    if not hub_reachable():  # not a cached snapshot either? then fail now, not after retries
        try:
            return _checked(Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                                   repo_type="model", local_files_only=True)), uri)
        except Exception:
            raise HubError(f"cannot download {uri}: it is not in the local cache and {constants.ENDPOINT} cannot be "
                           "reached (network, proxy, HF_ENDPOINT, HF_HUB_OFFLINE)") from None
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
        token = get_token()
        detail = str(err).splitlines()[0] if str(err) else ""
        raise HubError(f"cannot download {uri}: {hint} ({name}: {detail.replace(token, '***') if token else detail})"
                       ) from None
    return _checked(path, uri)


def _checked(path: Path, uri: str) -> Path:
    if checkpoint_kind(path) is None:
        raise HubError(f"{uri} is not a vla-structppo checkpoint (it lacks config.yaml and policy weights); push "
                       "one with vla-structppo push")
    return path


# -- local checkpoints ----------------------------------------------------------------------------------
def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint dir, a run dir (-> ``checkpoints/last``, else its newest complete checkpoint) or
    ``hf://org/name[@revision]`` -> the checkpoint dir."""
    text = str(path)
    if text.startswith(HF_SCHEME):
        return download(text)
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {text!r} does not exist (give a run dir such as runs/<name>, a checkpoint "
                              "dir such as runs/<name>/checkpoints/last, or hf://org/name)")
    if checkpoint_kind(p) is not None:
        return p.resolve()
    last = p / CHECKPOINTS / LAST
    if last.exists() and checkpoint_kind(last) is not None:
        return last.resolve()
    complete = [c for c in list_checkpoints(p) if checkpoint_kind(c) is not None]
    if complete:
        return complete[-1]
    partial = [f for f in (*ADAPTER_FILES, *FULL_MODEL_FILES) if (p / f).is_file()]
    if partial:  # some weights but not all: name what is missing
        kind = ADAPTER_FILES if any(f in ADAPTER_FILES for f in partial) else FULL_MODEL_FILES
        missing = [f for f in (CONFIG, *kind) if not (p / f).is_file()]
        raise CheckpointError(f"checkpoint {p} is incomplete: missing {missing}; it was damaged or not written by "
                              "vla-structppo: use another checkpoint")
    if (p / CONFIG).is_file():
        raise CheckpointError(f"{p} has a {CONFIG} but no policy weights ({POLICY_WEIGHTS}, an adapter or a model) "
                              f"and no complete checkpoint under {CHECKPOINTS}/: the run has not saved a checkpoint "
                              "yet, or this checkpoint was damaged")
    raise CheckpointError(f"{p} is neither a checkpoint dir ({CONFIG} + policy weights) nor a run dir with "
                          f"{CHECKPOINTS}/")


def pretrained_model(name: str | os.PathLike) -> str | None:
    """``name`` when it is a pretrained model rather than a vla-structppo checkpoint, else None.

    A pretrained model is a local model dir (``config.json``, no ``config.yaml`` and no ``checkpoints/``:
    e.g. a ``huggingface-cli download openvla/openvla-7b-finetuned-libero-spatial`` snapshot) or a Hub id
    ``org/name`` that is not a local path. Evaluating one measures the released model as it is."""
    text = str(name)
    if text.startswith(HF_SCHEME):
        return None
    p = Path(text).expanduser()
    if p.is_dir():
        own = (p / CONFIG).is_file() or (p / CHECKPOINTS).is_dir()
        return text if (p / "config.json").is_file() and not own else None
    return text if is_hub_repo_id(text) else None


def run_dir_of(checkpoint: Path) -> Path | None:
    """``<run>`` for ``<run>/checkpoints/<n>`` (``last`` resolved), else None (e.g. a Hub snapshot)."""
    p = Path(checkpoint).resolve()
    if p.parent.name == CHECKPOINTS and (p.parent.parent / CONFIG).is_file():
        return p.parent.parent
    return None


def read_config(checkpoint: Path) -> TrainConfig:
    """The resolved config a checkpoint was written with (older layouts migrated)."""
    file = Path(checkpoint) / CONFIG
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: {checkpoint} is not a checkpoint written by vla-structppo")
    try:
        return config_from_yaml_text(file.read_text())
    except (ConfigError, ValueError) as err:
        raise CheckpointError(f"{file} cannot be read as a vla-structppo config ({err}); the checkpoint is "
                              "damaged or was written by an incompatible version") from None


def base_model_of(checkpoint: Path, cfg: TrainConfig | None = None) -> tuple[str | None, str | None]:
    """``(model.name_or_path, model.revision)`` of the base VLA a checkpoint belongs to.

    Its own config's ``model.name_or_path``, else the base of its ``init_from`` checkpoint, and so on
    (a PPO run started from a PPO run started from SFT names none of them). ``(None, None)`` for a
    policy without a base model (the MLPs). ``cfg``: the checkpoint's config, when already read."""
    seen: list[str] = []
    cfg = cfg if cfg is not None else read_config(checkpoint)
    where = str(checkpoint)
    while not cfg.model.name_or_path and cfg.policy.type == "vla":
        if not cfg.init_from:
            raise CheckpointError(f"{where} names no base model (model.name_or_path) and no init_from checkpoint; "
                                  "set model.name_or_path to the VLA it was trained from")
        if cfg.init_from in seen:
            raise CheckpointError(f"the init_from chain of {checkpoint} loops at {cfg.init_from}")
        seen.append(cfg.init_from)
        try:
            parent = resolve(cfg.init_from)
        except CheckpointError:
            raise CheckpointError(f"{where} names no base model and was initialised from {cfg.init_from!r}, which "
                                  "is gone; set model.name_or_path to the base VLA") from None
        cfg, where = read_config(parent), str(parent)
    return cfg.model.name_or_path, cfg.model.revision


def _problems(checkpoint: Path, resume: bool) -> list[str]:
    problems = []
    for f in sorted(checkpoint.iterdir()):
        try:
            if f.suffix == ".safetensors":
                check_safetensors(f)
            elif f.suffix == ".json":
                check_json(f)
            elif resume and f.suffix == ".pt":
                check_torch_file(f)
        except CorruptFileError as err:
            problems.append(str(err))
    return problems


def verify(checkpoint: Path, *, resume: bool = False) -> None:
    """Every weight, JSON (and with ``resume``, ``torch.save``) file of a checkpoint is whole (headers and
    sizes read, nothing loaded); otherwise the error names the file and the newest intact earlier
    checkpoint of the same run to use instead."""
    problems = _problems(checkpoint, resume)
    if not problems:
        return
    run = run_dir_of(checkpoint)
    earlier = [c for c in list_checkpoints(run) if c.name.isdigit() and int(c.name) < int(checkpoint.name)
               and checkpoint_kind(c) is not None and not _problems(c, resume)] if run and checkpoint.name.isdigit() else []
    use = (f"the newest intact earlier checkpoint is {earlier[-1]} ({'resume' if resume else 'init_from'}="
           f"{earlier[-1]})" if earlier else "there is no intact earlier checkpoint of this run")
    raise CheckpointError(f"checkpoint {checkpoint} is damaged: {'; '.join(problems)}. {use}")
