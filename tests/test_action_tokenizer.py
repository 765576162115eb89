"""The action tokenizer: the bin grid, token ids, and strict JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vla_structppo.data.demos import quantile_bounds
from vla_structppo.policies.action_tokenizer import ActionTokenizer, ActionTokenizerError


def make(K: int = 5) -> ActionTokenizer:
    return ActionTokenizer.last_k(100, 2, K, [-1.0, 0.0], [1.0, 4.0])


def test_grid_round_trips_bin_values_and_clips():
    at = make()
    values = at.decode(np.array([[k, k] for k in range(5)]))
    assert values[:, 0].tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]  # both ends reachable, exact zero (odd K)
    assert values[:, 1].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert np.array_equal(at.encode(values), np.array([[k, k] for k in range(5)]))
    assert at.encode(np.array([[-9.0, 99.0], [0.24, 1.49]])).tolist() == [[0, 4], [2, 1]]  # clip, nearest
    with pytest.raises(ActionTokenizerError, match="3 dims"):
        at.encode(np.zeros((1, 3)))


def test_token_ids_are_the_last_k_and_map_back():
    at = make()
    assert at.token_ids == [95, 96, 97, 98, 99]
    bins = torch.tensor([[0, 4], [2, 3]])
    tokens = at.bins_to_tokens(bins)
    assert tokens.tolist() == [[95, 99], [97, 98]]
    assert torch.equal(at.tokens_to_bins(tokens), bins)
    with pytest.raises(ActionTokenizerError, match=r"\[3\]"):
        at.tokens_to_bins(torch.tensor([3, 96]))


def test_last_k_refuses_special_tokens_and_small_vocabularies():
    with pytest.raises(ActionTokenizerError, match="special tokens.*action_tokens=add"):
        ActionTokenizer.last_k(100, 2, 5, [-1, -1], [1, 1], reserved_ids=[98])
    with pytest.raises(ActionTokenizerError, match="cannot hold 256 action bins"):
        ActionTokenizer.last_k(200, 2, 256, [-1, -1], [1, 1])


def test_quantile_bounds_widen_constant_dims():
    a = np.stack([np.linspace(-2, 2, 101), np.full(101, 0.3)], axis=1)
    low, high = quantile_bounds(a)
    assert low[0] == pytest.approx(-1.96) and high[0] == pytest.approx(1.96)
    assert low[1] < 0.3 < high[1]


def test_json_round_trip_and_strict_loading(tmp_path):
    at = make()
    at.save(tmp_path)
    assert ActionTokenizer.load(tmp_path) == at
    good = json.loads((tmp_path / "action_tokenizer.json").read_text())
    for change, message in [({"extra": 1}, "unknown keys"), ({"num_bins": "5"}, "num_bins must be int"),
                            ({"token_ids": [95, 95, 97, 98, 99]}, "distinct"), ({"low": [1.0, 0.0]}, "high > low"),
                            ({"format_version": 9}, "format_version")]:
        (tmp_path / "action_tokenizer.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(ActionTokenizerError, match=message):
            ActionTokenizer.load(tmp_path)
    (tmp_path / "action_tokenizer.json").write_text(json.dumps({k: v for k, v in good.items() if k != "low"}))
    with pytest.raises(ActionTokenizerError, match="missing keys"):
        ActionTokenizer.load(tmp_path)
    with pytest.raises(ActionTokenizerError, match="no action tokenizer"):
        ActionTokenizer.load(tmp_path / "nowhere")
