"""Converting LIBERO's HDF5 demonstrations: OpenVLA's no-op rule, the 180° turn, the gripper conventions, errors.

These build small files in LIBERO's layout with h5py (``data/demo_<i>/actions``, ``obs/agentview_rgb`` …,
``data.attrs["problem_info"]``); a file recorded from the real simulator is converted and trained on in
``tests/test_sim_heavy.py`` (LIBERO venv).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from vla_structppo.data.demos import load_demos  # noqa: E402
from vla_structppo.data.libero_hdf5 import LiberoDataError, convert_libero_hdf5, drop_noops  # noqa: E402

MOVE = [0.5, 0.0, 0.0, 0.0, 0.0, 0.0]


def write_libero_file(path, demos: dict[str, np.ndarray], instruction: str | None = "pick up the bowl") -> None:
    """``demos``: name -> actions [T, 7]; picture t of a demo is filled with t (channel 0) and a marker row."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        if instruction is not None:
            data.attrs["problem_info"] = json.dumps({"problem_name": "libero_tabletop_manipulation",
                                                     "language_instruction": instruction})
        data.attrs["num_demos"] = len(demos)
        for name, actions in demos.items():
            g = data.create_group(name)
            g.create_dataset("actions", data=np.asarray(actions, np.float64))
            images = np.zeros((len(actions), 8, 6, 3), np.uint8)
            images[:, :, :, 0] = np.arange(len(actions))[:, None, None]
            images[:, 0, 0, 1] = 255  # marks the stored first row / first column
            g.create_dataset("obs/agentview_rgb", data=images)
            g.create_dataset("obs/eye_in_hand_rgb", data=images)
            g.attrs["num_samples"] = len(actions)


def test_openvla_noop_rule_compares_with_the_last_kept_gripper():
    a = np.array([[0, 0, 0, 0, 0, 0, -1],  # no motion, nothing kept yet: dropped
                  [*MOVE, -1],  # kept
                  [0, 0, 0, 0, 0, 0, -1],  # pause, same gripper: dropped
                  [0, 0, 0, 0, 0, 0, 1],  # gripper closes without motion: kept
                  [6e-5, 0, 0, 0, 0, 0, 1],  # below the 1e-4 threshold, gripper unchanged: dropped
                  [0, 0, 0, 0, 0, 0, -1],  # reopens: kept
                  [2e-4, 0, 0, 0, 0, 0, -1]], float)  # above the threshold: kept
    assert drop_noops(a).tolist() == [1, 3, 5, 6]


def test_conversion_turns_pictures_drops_noops_and_keeps_order(tmp_path):
    still, held = [0, 0, 0, 0, 0, 0, -1], [0, 0, 0, 0, 0, 0, 1]  # no motion, gripper open / closed
    demos = {f"demo_{i}": np.array([still, [*MOVE, -1], [*MOVE, 1], held if i else [*MOVE, 1]], float)
             for i in (0, 1, 2, 10)}  # demo_10 sorts after demo_2
    write_libero_file(tmp_path / "task_a_demo.hdf5", demos)
    write_libero_file(tmp_path / "KITCHEN_SCENE3_open_the_drawer_demo.hdf5", {"demo_0": demos["demo_0"]}, None)
    done = convert_libero_hdf5(tmp_path, tmp_path / "out")
    assert done == {"episodes": 5, "steps": 20, "kept": 12, "files": 2, "out": str(tmp_path / "out")}
    ds, stats = load_demos(tmp_path / "out")
    rows = ds.with_format("numpy")[:]
    # files in sorted order (KITCHEN... < task_a...), then demos by number
    assert rows["episode_index"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4]
    assert list(rows["instruction"][:3]) == ["open the drawer"] * 3  # no problem_info: from the file name
    assert set(rows["instruction"][3:]) == {"pick up the bowl"}
    first = np.asarray(ds[0]["image"])
    assert first.shape == (8, 6, 3) and first[-1, -1, 1] == 255 and first[0, 0, 1] == 0  # turned by 180°
    assert first[0, 0, 0] == 1  # step 0 was a no-op: the first row is step 1's picture
    np.testing.assert_allclose(rows["action"][0], [*MOVE, -1])
    assert stats.action_dims == 7
    info = json.loads((tmp_path / "out" / "source.json").read_text())
    assert info["kept"] == 12 and info["gripper"] == "raw"


def test_openvla_gripper_convention(tmp_path):
    write_libero_file(tmp_path / "t_demo.hdf5", {"demo_0": np.array([[*MOVE, -1], [*MOVE, 1], [*MOVE, 0.3]])})
    convert_libero_hdf5(tmp_path / "t_demo.hdf5", tmp_path / "o", gripper="openvla", noops="keep")
    ds, _ = load_demos(tmp_path / "o")
    assert [round(a[-1], 4) for a in ds["action"]] == [1.0, 0.0, 0.7]  # 1 = open, 0 = close (RLDS)


def test_bad_libero_inputs_name_the_fix(tmp_path):
    with pytest.raises(LiberoDataError, match="no LIBERO demonstrations"):
        convert_libero_hdf5(tmp_path / "missing", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LiberoDataError, match="holds no .hdf5"):
        convert_libero_hdf5(tmp_path / "empty", tmp_path / "o")
    (tmp_path / "junk.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(LiberoDataError, match="damaged or partial"):
        convert_libero_hdf5(tmp_path / "junk.hdf5", tmp_path / "o")
    with h5py.File(tmp_path / "other.hdf5", "w") as f:
        f.create_dataset("x", data=[1])
    with pytest.raises(LiberoDataError, match="not a LIBERO demonstration file"):
        convert_libero_hdf5(tmp_path / "other.hdf5", tmp_path / "o")
    write_libero_file(tmp_path / "ok_demo.hdf5", {"demo_0": np.array([[*MOVE, -1]])})
    with pytest.raises(LiberoDataError, match=r"cameras there: \['agentview_rgb', 'eye_in_hand_rgb'\]"):
        convert_libero_hdf5(tmp_path / "ok_demo.hdf5", tmp_path / "o", camera="front")
    write_libero_file(tmp_path / "still_demo.hdf5", {"demo_0": np.zeros((3, 7))})
    with pytest.raises(LiberoDataError, match="every step was a no-op"):
        convert_libero_hdf5(tmp_path / "still_demo.hdf5", tmp_path / "o")
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob("o.partial*"))  # nothing left behind
    (tmp_path / "taken").mkdir()
    with pytest.raises(LiberoDataError, match="already exists"):
        convert_libero_hdf5(tmp_path / "ok_demo.hdf5", tmp_path / "taken")


def test_convert_verb(tmp_path, capsys):
    from vla_structppo.cli import main

    write_libero_file(tmp_path / "t_demo.hdf5", {"demo_0": np.array([np.zeros(7), [*MOVE, -1]])})
    main(["convert", "libero", str(tmp_path / "t_demo.hdf5"), f"out={tmp_path / 'o'}"])
    assert "1 of 2 steps kept (1 no-ops dropped)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["convert", "libero", str(tmp_path / "t_demo.hdf5"), "outdir=x"])
    assert "out=, camera=, gripper=, noops=" in capsys.readouterr().err
