"""vla_structppo: PPO with a structured advantage for vision-language-action models.

Kept import-light on purpose: ``import vla_structppo`` (and the CLI's config checks) must not load
torch or transformers, so bad recipes fail in milliseconds.
"""

__version__ = "0.1.0"
