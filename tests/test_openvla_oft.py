"""OpenVLA-OFT natively: parity with the original code on tiny checkpoints in the released layouts.

``tests/fixtures/openvla_oft_parity.json`` holds what the original moojink/openvla-oft code (213c5ff, its
transformers fork bc339d9 with the bidirectional SDPA path, timm 0.9.10; float32, ``attn_implementation="sdpa"``,
LIBERO constants: chunks of 8 x 7) gives on

* ``discrete``: the checkpoint ``save_tiny_openvla(seed=0)`` writes (the layout of the SFT checkpoints SimpleVLA-RL
  and RLinf train: one third-person image, no proprio, the LM head's action tokens), 8 picture / instruction pairs;
* ``official``: the same weights plus the official layout's extra files as the original finetune.py saves them
  (``action_head--150000_checkpoint.pt``: the L1 regression head, bf16, DDP ``module.`` keys;
  ``proprio_projector--150000_checkpoint.pt``; ``dataset_statistics.json``, whose statistics differ from
  config.json's on purpose), 4 records with a wrist picture and a robot state.

The reference was made in a scratch venv by a script that runs the original code (docs/vla.md#openvla-oft says
how); nothing of it is part of this project. Tolerances: tokens equal, log-probs 1e-4, actions 1e-5 (discrete:
decoded bins, exact) and 1e-4 (the L1 head's float32 regression).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from openvla_parity import test_pictures as make_pictures  # noqa: E402

from vla_structppo.predict import Predictor  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = json.loads((FIXTURES / "openvla_oft_parity.json").read_text())
OFT = ["action.chunk_size=8", "action.decoding=parallel", "model.unnorm_key=libero_spatial", "device=cpu"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from vla_structppo.testing.tiny_openvla import save_tiny_openvla

    root = tmp_path_factory.mktemp("oft")
    discrete = save_tiny_openvla(root / "discrete", seed=0)
    official = root / "official"
    shutil.copytree(discrete, official)
    for f in (FIXTURES / "openvla_oft").iterdir():
        shutil.copy(f, official / f.name)
    pictures = {p.name: p for p in make_pictures(root)}
    return discrete, official, pictures


def _compare(result: dict, record: dict, action_tol: float) -> None:
    assert result["token_ids"] == record["restricted_token_ids"] == record["token_ids"]
    np.testing.assert_allclose(result["logprobs"], record["logprobs"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(result["action"], record["action"], rtol=0, atol=action_tol)


def test_parallel_decoded_tokens_logprobs_and_actions_match_the_original(checkpoints):
    discrete, _, pictures = checkpoints
    predictor = Predictor(str(discrete), OFT)
    for record in REFERENCE["discrete"]["records"]:
        result = predictor(str(pictures[Path(record["image"]).name]), record["instruction"])
        assert np.shape(result["action"]) == (8, 7) and len(result["token_ids"]) == 56
        _compare(result, record, action_tol=1e-5)


def test_the_official_layout_loads_with_wrist_camera_proprio_and_l1_head(checkpoints):
    _, official, pictures = checkpoints
    predictor = Predictor(str(official), [*OFT, "model.num_images=2", "model.use_proprio=true",
                                          "model.action_head=l1"])
    for record in REFERENCE["official"]["records"]:
        result = predictor(str(pictures[Path(record["image"]).name]), record["instruction"],
                           wrist=str(pictures[Path(record["wrist_image"]).name]),
                           state=",".join(repr(x) for x in record["proprio"]))
        _compare(result, record, action_tol=1e-4)
    # the same checkpoint through its LM head's tokens only (no L1 head): the official layout's inputs still count
    tokens = Predictor(str(official), [*OFT, "model.num_images=2", "model.use_proprio=true"])
    record = REFERENCE["official"]["records"][0]
    result = tokens(str(pictures[Path(record["image"]).name]), record["instruction"],
                    wrist=str(pictures[Path(record["wrist_image"]).name]),
                    state=",".join(repr(x) for x in record["proprio"]))
    np.testing.assert_allclose(result["logprobs"], record["logprobs"], rtol=0, atol=1e-4)


def test_the_original_needs_its_bidirectional_mask(checkpoints, monkeypatch):
    """The reference's causal run (stock attention, what a wrong transformers install gives: openvla-oft#135)
    differs from the bidirectional one, and so does the port when the mask is made causal."""
    from vla_structppo.policies import vla as vla_module

    discrete, _, pictures = checkpoints
    monkeypatch.setattr(vla_module, "bidirectional_mask", lambda config, mask, dtype: mask)
    predictor = Predictor(str(discrete), OFT)
    record = REFERENCE["discrete"]["records"][0]
    result = predictor(str(pictures[Path(record["image"]).name]), record["instruction"])
    np.testing.assert_allclose(result["logprobs"], record["causal_eager_logprobs"], rtol=0, atol=1e-4)
    assert np.abs(np.subtract(result["logprobs"], record["logprobs"])).max() > 0.05


def test_missing_extra_files_are_named(checkpoints, tmp_path):
    from vla_structppo.policies.vla_arch import VLACheckpointError

    discrete, _, _ = checkpoints
    with pytest.raises(VLACheckpointError, match="action_head--<step>_checkpoint.pt"):
        Predictor(str(discrete), [*OFT, "model.action_head=l1"])
    with pytest.raises(VLACheckpointError, match="proprio_projector--<step>_checkpoint.pt"):
        Predictor(str(discrete), [*OFT, "model.use_proprio=true"])


def test_settings_that_do_not_fit_the_checkpoint_are_named(checkpoints):
    from vla_structppo.config import ConfigError
    from vla_structppo.policies.action_tokenizer import ActionTokenizerError

    _, official, _ = checkpoints
    with pytest.raises(ConfigError, match="model.action_head=l1 reads the hidden states"):
        Predictor(str(official), ["model.unnorm_key=libero_spatial", "model.action_head=l1"])
    with pytest.raises(ActionTokenizerError, match="env.action_dims=6"):
        Predictor(str(official), [*OFT, "env.action_dims=6"])


def test_a_hub_ids_statistics_come_from_its_dataset_statistics_file(tmp_path, monkeypatch):
    """A Hub id is read like a local dir: ``dataset_statistics.json`` (here from a Hugging Face cache in the Hub's
    layout, offline) replaces config.json's ``norm_stats``; a model without the file keeps config.json's."""
    import huggingface_hub.constants as hf

    from vla_structppo.policies import vla_loading

    cache, revision = tmp_path / "hub", "0" * 40
    own = {"libero_spatial": {"action": {"q01": [0.0] * 7, "q99": [2.0] * 7}}}
    config = {"norm_stats": {"libero_spatial": {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7}}}}
    for name, files in (("org/with-stats", {"dataset_statistics.json": own}), ("org/without", {})):
        repo = cache / f"models--{name.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(revision)
        snapshot = repo / "snapshots" / revision
        snapshot.mkdir(parents=True)
        for filename, content in {"config.json": config, **files}.items():
            (snapshot / filename).write_text(json.dumps(content))
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    assert vla_loading.openvla_norm_stats("org/with-stats", config) == own
    assert vla_loading.openvla_norm_stats("org/without", config) == config["norm_stats"]
