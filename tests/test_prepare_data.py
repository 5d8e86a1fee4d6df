"""prepare_data.py on tiny fake trees in each real layout: CSVs (only inside the data root), skip
reports, replay draws."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import helpers
from cli import prepare_data as prepare_cli
from data import prepare as P
from helpers import error_of, write_image
from loaders import get_dataset


def rows(path):
    with open(path, newline="") as f:
        return [tuple(r) for r in csv.reader(f)]


def test_nyu(tmp_path, capsys):
    root = tmp_path / "datasets"
    src = root / "nyu"
    out = helpers.write_nyu_release(str(src), csvs=False)
    tr = src / "data/nyu2_train/bedroom_0001_out"
    (tr / "7.jpg").write_bytes((tr / "1.jpg").read_bytes())                       # image without depth
    (tr / "8.png").write_bytes((tr / "1.png").read_bytes())                       # depth without image
    (tr / "9.jpg").write_bytes(b"broken")                                         # unreadable image
    (tr / "9.png").write_bytes((tr / "1.png").read_bytes())
    helpers.write_rgb(str(tr / "10.jpg"), helpers.rgb_pattern(helpers.NYU_HW, 0))
    helpers.write_png16(str(tr / "10.png"), np.ones(helpers.NYU_HW))              # 16-bit in the 8-bit set
    assert prepare_cli.main(["nyu", "--src", str(src), "--data-root", str(root), "--replay-size", "3", "--seed", "1"]) == 0
    train = rows(root / "nyu2_train.csv")
    assert train == [("nyu/" + a, "nyu/" + b) for a, b, _ in out["train"]]
    assert rows(root / "nyu2_test.csv") == [("nyu/" + a, "nyu/" + b) for a, b, _ in out["test"]]
    replay = rows(root / "replay_nyu.csv")
    assert len(replay) == 3 and set(replay) <= set(train)
    text = capsys.readouterr().out
    for reason in ("image without depth", "depth without image", "unreadable image", "not 8-bit"):
        assert reason in text, reason
    skipped = (root / "prepare_nyu_skipped.txt").read_text()
    assert "7.jpg" in skipped and "8.png" in skipped and "9.jpg" in skipped and "10.jpg" in skipped
    assert len(get_dataset("N", "train", str(root), scale=0.25)) == 4   # the CSVs load


def test_kitti(tmp_path, capsys):
    root = tmp_path / "datasets"
    src = root / "kitti"
    out = helpers.write_kitti(str(src), csvs=False, raw_dir="raw_data")
    os.remove(src / out["train"][0][0])                                          # raw image missing
    val = src / "val_selection_cropped"
    extra = "2011_09_26_drive_0001_sync_image_0000000099_image_03.png"
    helpers.write_rgb(str(val / "image" / extra), helpers.rgb_pattern(helpers.KITTI_HW, 0))  # no ground truth for it
    with pytest.raises(SystemExit, match="--raw"):
        prepare_cli.main(["kitti", "--src", str(src), "--data-root", str(root)])
    assert prepare_cli.main(["kitti", "--src", str(src), "--raw", str(src / "raw_data"), "--data-root", str(root)]) == 0
    train = rows(root / "kitti_train_sparse.csv")
    assert train == [("kitti/" + a, "kitti/" + b) for a, b, _ in out["train"][1:]]
    test = rows(root / "kitti_val_select.csv")
    assert test == [("kitti/" + a, "kitti/" + b) for a, b, _ in out["test"]]
    assert test[0][1].endswith("_sync_groundtruth_depth_0000000000_image_02.png")
    text = capsys.readouterr().out
    assert "depth without raw image" in text and "image without depth" in text and extra in text
    assert len(get_dataset("K", "test", str(root), scale=0.25)) == 2


def test_kitti_gt_name():
    assert P.kitti_gt_name("2011_09_26_drive_0002_sync_image_0000000005_image_02.png") == \
        "2011_09_26_drive_0002_sync_groundtruth_depth_0000000005_image_02.png"
    assert P.kitti_gt_name("foo.png") is None


def test_scannet(tmp_path, capsys):
    root = tmp_path / "datasets"
    src = root / "scannet"
    helpers.write_scannet(str(src), csvs=False, frames=(0, 5, 12))
    os.remove(src / "scene0001_00/depth/12.png")
    (tmp_path / "test_scenes.txt").write_text("scene0002_00\nscene9999_00\n")
    assert prepare_cli.main(["scannet", "--src", str(src), "--data-root", str(root), "--stride", "12",
                   "--test-scenes", str(tmp_path / "test_scenes.txt")]) == 0
    train, test = rows(root / "scannet_train.csv"), rows(root / "scannet_test.csv")
    assert test == [(f"scannet/scene0002_00/color/{n}.jpg", f"scannet/scene0002_00/depth/{n}.png") for n in (0, 12)]
    assert ("scannet/scene0000_00/color/12.jpg", "scannet/scene0000_00/depth/12.png") in train
    assert len(train) == 3 and not any("/5." in a for a, _ in train)                # stride 12
    text = capsys.readouterr().out
    assert "scene0001_00/color/12.jpg" in text and "scene9999_00" in text
    item = get_dataset("S", "test", str(root), scale=0.25)[0]
    assert item["image"].shape == (3, 58, 76)
    # seeded fraction: same seed, same split
    prepare_cli.main(["scannet", "--src", str(src), "--data-root", str(root), "--test-fraction", "0.34", "--seed", "4"])
    first = rows(root / "scannet_test.csv")
    prepare_cli.main(["scannet", "--src", str(src), "--data-root", str(root), "--test-fraction", "0.34", "--seed", "4"])
    assert rows(root / "scannet_test.csv") == first and len({a.split("/")[1] for a, _ in first}) == 1


def test_nyu_h5_outside_root(tmp_path, capsys):
    helpers.write_nyu_h5(str(tmp_path / "src"))
    root = tmp_path / "datasets"
    assert prepare_cli.main(["nyu_h5", "--src", str(tmp_path / "src/nyudepthv2"), "--data-root", str(root)]) == 0
    test = rows(root / "nyu2_test.csv")
    assert test[0] == ("../src/nyudepthv2/val/office_0001/00001.h5",) * 2
    assert "outside the data root" in capsys.readouterr().out
    assert get_dataset("N", "test", str(root), scale=0.25)[0]["depth"].shape == (1, 58, 76)


def test_nyu_mat(tmp_path):
    root = tmp_path / "datasets"
    helpers.write_nyu_mat(str(root / "nyu_depth_v2_labeled.mat"), n=4)
    (tmp_path / "split.txt").write_text("1 4")
    assert prepare_cli.main(["nyu_mat", "--mat", str(root / "nyu_depth_v2_labeled.mat"), "--splits", str(tmp_path / "split.txt"),
                   "--data-root", str(root), "--replay-size", "1"]) == 0
    assert rows(root / "nyu2_test.csv") == [("nyu_depth_v2_labeled.mat", "1"), ("nyu_depth_v2_labeled.mat", "4")]
    assert len(rows(root / "nyu2_train.csv")) == 2 and len(rows(root / "replay_nyu.csv")) == 1
    assert len(get_dataset("N", "train", str(root), scale=0.25)) == 2


def test_generic(tmp_path, clean_registry):
    root = tmp_path / "datasets"
    root.mkdir()
    (root / "domains.json").write_text(json.dumps([{"name": "office", "letter": "O", "input_size": [32, 48]}]))
    for i in range(5):
        helpers.write_rgb(str(root / f"office/rgb/{i}.jpg"), helpers.rgb_pattern((40, 56), i))
        helpers.write_png16(str(root / f"office/depth/{i}.png"), helpers.dense_values((40, 56), 100, 5000, i))
    assert prepare_cli.main(["generic", "--domain", "O", "--src", str(root / "office"), "--data-root", str(root),
                   "--test-fraction", "0.4"]) == 0
    assert len(rows(root / "office_train.csv")) == 3 and len(rows(root / "office_test.csv")) == 2
    assert get_dataset("O", "test", str(root))[0]["depth"].shape == (1, 32, 48)


def test_generic_float_depth_indexes_npy_and_exr_alike(tmp_path, clean_registry):
    import OpenEXR

    root = tmp_path / "datasets"
    root.mkdir()
    (root / "domains.json").write_text(json.dumps([{"name": "render", "letter": "R", "input_size": [32, 48],
                                                    "depth_encoding": {"kind": "npy", "scale": 1.0}}]))
    (root / "render/depth").mkdir(parents=True)
    for i in range(4):
        helpers.write_rgb(str(root / f"render/rgb/{i}.jpg"), helpers.rgb_pattern((40, 56), i))
        d = np.full((40, 56), 2.0 + i, np.float32)
        if i % 2:
            OpenEXR.File({}, {"Z": d}).write(str(root / f"render/depth/{i}.exr"))
        else:
            np.save(root / f"render/depth/{i}.npy", d)
    assert prepare_cli.main(["generic", "--domain", "R", "--src", str(root / "render"), "--data-root", str(root),
                             "--test-fraction", "0.5"]) == 0
    indexed = sorted(os.path.basename(d) for s in ("train", "test") for _, d in rows(root / f"render_{s}.csv"))
    assert indexed == ["0.npy", "1.exr", "2.npy", "3.exr"]
    splits = [get_dataset("R", s, str(root), train=False) for s in ("train", "test")]
    assert sorted(float(ds[i]["depth"].max()) for ds in splits for i in range(len(ds))) == [2.0, 3.0, 4.0, 5.0]


def test_write_replay_csv(tmp_path):
    train = [(f"a/{i}.jpg", f"a/{i}.png") for i in range(20)]
    helpers.write_csv(str(tmp_path / "t.csv"), train)
    assert P.write_replay_csv(str(tmp_path / "t.csv"), str(tmp_path / "r1.csv"), n=5, seed=2) == 5
    P.write_replay_csv(str(tmp_path / "t.csv"), str(tmp_path / "r2.csv"), n=5, seed=2)
    r1 = rows(tmp_path / "r1.csv")
    assert r1 == rows(tmp_path / "r2.csv") and len(set(r1)) == 5 and set(r1) <= set(train)
    assert P.write_replay_csv(str(tmp_path / "t.csv"), str(tmp_path / "r3.csv"), n=500) == 20
    assert sorted(rows(tmp_path / "r3.csv")) == sorted(train)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        P.write_replay_csv(str(tmp_path / "nope.csv"), str(tmp_path / "r.csv"))


def test_replay_subcommand(tmp_path, capsys):
    helpers.write_csv(str(tmp_path / "kitti_train_sparse.csv"), [(f"{i}.png", f"{i}d.png") for i in range(10)])
    assert prepare_cli.main(["replay", "--domain", "kitti", "--data-root", str(tmp_path), "--replay-size", "4"]) == 0
    assert len(rows(tmp_path / "replay_kitti.csv")) == 4
    assert "replay_kitti.csv" in capsys.readouterr().out


def test_help_lists_every_option(capsys):
    for cmd in ("nyu", "kitti", "scannet", "nyu_h5", "nyu_mat", "generic", "replay"):
        with pytest.raises(SystemExit) as e:
            prepare_cli.main([cmd, "--help"])
        assert e.value.code == 0
        assert "--data-root" in capsys.readouterr().out


def test_missing_src(tmp_path):
    with pytest.raises(SystemExit, match="nyu2_train"):
        prepare_cli.main(["nyu", "--src", str(tmp_path), "--data-root", str(tmp_path / "d")])


def test_library_raises_input_error_the_command_one_error_line(tmp_path):
    from base.errors import InputError
    with pytest.raises(InputError, match="no data/nyu2_train") as stop:
        P.prepare(P.NyuSource(src=str(tmp_path)), P.IndexOptions(data_root=str(tmp_path / "d")))
    assert not str(stop.value).startswith("error:")
    with pytest.raises(InputError, match="unknown domain 'Q'"):
        P.draw_replay(P.ReplaySettings(domain="Q", data_root=str(tmp_path)))
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(P.__file__))), "prepare_data.py")
    done = subprocess.run([sys.executable, script, "nyu", "--src", str(tmp_path), "--data-root",
                           str(tmp_path / "d")], capture_output=True, text=True)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: no data/nyu2_train") and done.stderr.count("\n") == 1, done.stderr


# ---- prepare_data.py writes index CSVs only inside the data root ----------------------
@pytest.mark.parametrize("name", ["/ABS/evil.csv", "../evil.csv", "sub/../../evil.csv"])
def test_prepare_data_keeps_csvs_inside_the_data_root(tmp_path, clean_registry, name):
    root = tmp_path / "root"
    src = tmp_path / "src"
    (src / "depth").mkdir(parents=True)
    for i in range(3):
        write_image(src / "rgb" / f"{i}.png", (16, 12))
        Image.fromarray(np.full((12, 16), 1000 + i, np.uint16)).save(src / "depth" / f"{i}.png")
    target = name.replace("/ABS", str(tmp_path))
    root.mkdir()
    (root / "domains.json").write_text(json.dumps([{"name": "lab", "letter": "L", "train_csv": target}]))
    msg = error_of(prepare_cli.main, ["generic", "--src", str(src), "--data-root", str(root), "--domain", "lab"])
    assert "train_csv" in msg and "inside the data root" in msg
    assert not (tmp_path / "evil.csv").exists()
