"""``vla-structppo predict MODEL image=PATH instruction="..." [key=value ...] [--json]``: one greedy action.

How a user checks a checkpoint before spending GPU hours on it. ``MODEL`` is a run's checkpoint (or run
dir, or ``hf://``), a local model dir (e.g. a downloaded ``openvla/openvla-7b`` snapshot) or a Hub id.
The policy decodes its action tokens greedily (with the KV cache, or in one parallel pass for
``action.decoding=parallel``), each restricted to the K bin tokens (exactly what evaluation runs), and the action
is those bins decoded to continuous values — for OpenVLA with its own coding and ``model.unnorm_key``'s
statistics. A chunked policy (``action.chunk_size=H``) gives H x A tokens and an action of H steps. ``--json``
prints ``token_ids`` (the H x A ids), ``bins``, ``logprobs`` (each chosen token's log-prob under the K-bin
restricted softmax at temperature 1, float32) and ``action`` (``[A]``, or ``[H, A]`` with chunks); with
OpenVLA-OFT's L1 head (``model.action_head=l1``) ``action`` is the head's continuous chunk and the token fields
are those of the LM head in the same forward pass. Any config key can be given (``model.dtype=bfloat16``,
``device=cuda``, ``action.chunk_size=8 action.decoding=parallel`` for an OpenVLA-OFT checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoints import build_vla_policy, layout, load_agent, resolve
from .checkpoints.store import CheckpointError
from .config import ConfigError, load_config
from .errors import UserError
from .files import check_json

__all__ = ["Predictor", "format_action", "predict", "predict_inputs"]

INPUT_KEYS = ("image", "instruction")
OPTIONAL_INPUTS = ("wrist", "state")  # OpenVLA-OFT's official layout: the wrist camera, the robot state


def predict_inputs(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split ``key=value`` arguments into the inputs (``image``, ``instruction``) and config overrides."""
    inputs, overrides = {}, []
    for item in args:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"predict argument {item!r} must look like key=value (image=PATH, instruction=TEXT, "
                              "or a config key such as model.unnorm_key=bridge_orig)")
        if key in INPUT_KEYS or key in OPTIONAL_INPUTS:
            inputs[key] = value
        else:
            overrides.append(item)
    missing = [k for k in INPUT_KEYS if not inputs.get(k)]
    if missing:
        raise ConfigError(f"predict needs {' and '.join(f'{k}=...' for k in missing)}: "
                          'vla-structppo predict MODEL image=PATH instruction="pick up the red block"')
    return inputs, overrides


def _action_shape(model: str, overrides: list[str]) -> tuple[int, int]:
    """``(D, K)`` of a bare model dir: OpenVLA's from its norm_stats, others' from its action_tokenizer.json."""
    from .policies.action_tokenizer import ActionTokenizer
    from .policies.vla_loading import local_snapshot, openvla_norm_stats

    d = Path(local_snapshot(model, None))
    cfg = check_json(d / "config.json")
    if cfg.get("model_type") == "openvla":
        key = next((o.split("=", 1)[1] for o in overrides if o.startswith("model.unnorm_key=")), None)
        tok = ActionTokenizer.openvla(openvla_norm_stats(str(d), cfg), key)
    elif (d / layout.ACTION_TOKENIZER).is_file():
        tok = ActionTokenizer.load(d)
    else:
        raise CheckpointError(f"{model} has no action tokens to decode: give a checkpoint trained by vla-structppo, "
                              f"an OpenVLA checkpoint, or a model dir with {layout.ACTION_TOKENIZER} "
                              "(scripts/make_tiny_vla.py writes one)")
    return tok.action_dims, tok.num_bins


def _policy(model: str, overrides: list[str]) -> Any:
    """The VLA policy of a checkpoint (with its adapter) or of a bare model (no adapter)."""
    try:
        checkpoint = resolve(model)
    except CheckpointError:
        checkpoint = None
    if checkpoint is not None:
        agent, cfg = load_agent(checkpoint, overrides)
        if not agent.is_vla:
            raise ConfigError(f"{model} is a policy.type={cfg.policy.type} checkpoint: it reads state vectors, not "
                              "images; predict takes VLA checkpoints")
        return agent.policy
    D, K = _action_shape(model, overrides)
    cfg = load_config(None, ["policy.type=vla", f"model.name_or_path={model}", "env.observation=image",
                             f"env.action_dims={D}", f"env.num_bins={K}", "model.lora.enabled=false", *overrides])
    policy = build_vla_policy(cfg)
    import torch

    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    return policy.to(device).eval()


class Predictor:
    """A model loaded once, asked for greedy actions (``predict`` loads and asks once)."""

    def __init__(self, model: str, overrides: list[str] = ()) -> None:
        self.model = model
        self.policy = _policy(model, list(overrides))
        self.policy.temperature = 1.0  # the log-probs reported are the model's own restricted softmax

    def __call__(self, image: str, instruction: str, wrist: str | None = None, state: str | None = None
                 ) -> dict[str, Any]:
        import torch

        path = Path(image)
        picture = _picture(image, "image")
        policy = self.policy
        with torch.no_grad():
            out = policy.act(policy.prepare(self._observation(picture, instruction, wrist, state)), deterministic=True)
        bins = out.actions[0].cpu()
        tok = policy.action_tokenizer
        H = policy.chunk_size
        if out.continuous is not None:  # OFT's L1 head: its continuous chunk, un-normalised
            action = tok.coding.unnormalize(out.continuous[0].cpu().double().numpy())
        else:
            action = tok.decode(bins.numpy().reshape(H, -1))
        result = {"model": self.model, "image": str(path), "instruction": instruction,
                  "token_ids": [int(t) for t in tok.bins_to_tokens(bins)], "bins": [int(b) for b in bins],
                  "logprobs": [float(x) for x in out.logp[0].float().cpu()]}
        result["action"] = action.tolist() if H > 1 else [float(x) for x in action[0]]
        return result

    def _observation(self, picture: np.ndarray, instruction: str, wrist: str | None, state: str | None) -> dict:
        """One observation: the picture (and the wrist picture, OFT's second view), the instruction (and the robot
        state, OFT's proprio input)."""
        views = [picture] + ([_picture(wrist, "wrist")] if wrist else [])
        if len(views) != self.policy.num_images:
            raise UserError(f"this model reads {self.policy.num_images} picture(s): give image=PATH"
                            + (" wrist=PATH" if self.policy.num_images > 1 else "") + " accordingly")
        obs: dict[str, Any] = {"image": [views], "instruction": [instruction]}  # pictures of any sizes
        if self.policy.proprio_projector is not None:
            if state is None:
                raise UserError("this model reads the robot state: give state=x1,x2,... (model.use_proprio=true)")
            obs["state"] = np.asarray([[float(x) for x in state.split(",")]], np.float32)
        return obs


def _picture(image: str, key: str) -> np.ndarray:
    from PIL import Image

    path = Path(image)
    if not path.is_file():
        raise UserError(f"{key}={image!r}: no such file")
    try:
        return np.asarray(Image.open(path).convert("RGB"))
    except OSError as err:
        raise UserError(f"{key}={image!r} is not a picture PIL can read ({err})") from None


def predict(model: str, image: str, instruction: str, overrides: list[str] = (), wrist: str | None = None,
            state: str | None = None) -> dict[str, Any]:
    """One greedy action of ``model`` for the picture at ``image`` and ``instruction`` (module doc)."""
    return Predictor(model, overrides)(image, instruction, wrist, state)


def format_action(result: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(result)
    steps = result["action"] if result["action"] and isinstance(result["action"][0], list) else [result["action"]]
    rows = ["[" + ", ".join(f"{x:.6g}" for x in step) + "]" for step in steps]
    return "action: " + rows[0] if len(rows) == 1 else "action chunk:\n  " + "\n  ".join(rows)
