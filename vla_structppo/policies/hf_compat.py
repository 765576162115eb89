"""What differs between the transformers 5.x releases this project runs on (pyproject: ``transformers>=5.0,<6``).

The decoders' KV-cache keyword: transformers 5 renames ``past_key_values=`` to ``cache=`` (both are accepted for a
while, the old one is removed at 5.40; models/notes.md). A release from before the rename silently drops an
unknown ``cache=`` into ``**kwargs`` and decodes every cached step without its cache -- the policy's log-probs then
stop matching the teacher-forced update's (seen on a GPU image with transformers 5.17). The keyword is read off
the installed release once.
"""

from __future__ import annotations

import inspect
from functools import cache

__all__ = ["cache_keyword"]


@cache
def cache_keyword() -> str:
    """``"cache"`` where the installed transformers' decoders take it, else ``"past_key_values"``."""
    from transformers import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"
