"""Checks of the files a user hands in, without loading them: safetensors headers, ``torch.save`` archives,
JSON, and whether the Hugging Face Hub can be reached at all.

A truncated download or a half-copied checkpoint otherwise surfaces deep inside a loader as an error that
names no file. These checks read a few bytes (a safetensors header, a zip's central directory) and fail
with the file's path and what is wrong, before anything heavy loads.
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = ["REPO_PART", "CorruptFileError", "check_json", "check_safetensors", "check_torch_file", "hub_reachable",
           "is_hub_repo_id", "state_dict_mismatch"]

# one part of a Hub repo id (org or name), as the Hub allows: letters, digits, - _ .; no leading/trailing - or .
REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"^{REPO_PART}/{REPO_PART}$")


def is_hub_repo_id(text: str) -> bool:
    """``org/name`` that is not meant as a local path: not absolute / relative / home, and its first part is not a
    directory here (``runs/typo`` is a path that does not exist, not a Hub id)."""
    if not _REPO_ID.match(text) or "--" in text or ".." in text or text.startswith(("/", ".", "~")):
        return False
    return not Path(text.split("/")[0]).is_dir()


class CorruptFileError(UserError, ValueError):
    """A file that is missing, truncated or not what its name says; the message names it."""


def check_safetensors(path: str | Path) -> dict[str, Any]:
    """The header of a safetensors file (tensor name -> dtype / shape / offsets), after checking that the
    file is as long as its header says (a truncated download fails here, naming the file)."""
    p = Path(path)
    if not p.is_file():
        raise CorruptFileError(f"{p} is missing")
    size = p.stat().st_size
    try:
        with p.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                raise ValueError(f"header length {n} is not plausible")
            if n > size - 8:
                raise CorruptFileError(f"{p} is truncated: {size} bytes, its header alone needs {8 + n}; download "
                                       "or copy it again")
            header = json.loads(f.read(n))
    except (struct.error, ValueError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{p} is not a safetensors file ({err}); it is damaged or was not fully written") from None
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        raise CorruptFileError(f"{p} is truncated: {size} bytes, its header describes {expected}; download or copy it "
                               "again")
    return header


def check_torch_file(path: str | Path) -> None:
    """A ``torch.save`` file is a zip archive whose directory sits at its end: a truncated one has none."""
    p = Path(path)
    if not p.is_file():
        raise CorruptFileError(f"{p} is missing")
    try:
        with zipfile.ZipFile(p) as z:
            z.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise CorruptFileError(f"{p} is damaged ({err}); it was not fully written") from None


def check_json(path: str | Path) -> Any:
    """The parsed content of a JSON file, or an error naming the file and the position of the fault."""
    p = Path(path)
    if not p.is_file():
        raise CorruptFileError(f"{p} is missing")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{p} is not valid JSON ({err})") from None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub endpoint (``HF_ENDPOINT``) answers at all, within ``timeout`` seconds: checked once
    before a download so an offline machine fails at once instead of after half a minute of retries."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout)
        return True
    except urllib.error.HTTPError:  # it answered (with an error status): it is reachable
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def state_dict_mismatch(own: dict[str, Any], state: dict[str, Any], limit: int = 5) -> str | None:
    """What keeps ``state`` from loading strictly into a module whose state dict is ``own`` (missing and unexpected
    keys, other shapes; the first ``limit`` of each), or None when it fits."""
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} here"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if not (missing or unexpected or shapes):
        return None
    return f"missing {missing[:limit]}, unexpected {unexpected[:limit]}, shapes {shapes[:limit]}"

