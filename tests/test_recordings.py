"""The recording readers (data/recordings.py): each layout on small files written in that layout,
their units, pairing and skips, and the one-line errors of bad recordings."""
import os

import numpy as np
import pytest
from PIL import Image

from base.errors import InputError
from data.recordings import associate, make_layout, read_recording
from loaders import decode_depth

W, H = 8, 6


def rgb(path, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)


def png16(path, values, size=(W, H)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full(size[::-1], values, dtype=np.uint16)).save(path)


def tum(root, rgb_times, depth_times, value=10000, extra_lines=()):
    """A TUM recording: colour and depth PNGs named by timestamp, the two list files."""
    for t in rgb_times:
        rgb(os.path.join(root, "rgb", f"{t:.6f}.png"))
    for t in depth_times:
        png16(os.path.join(root, "depth", f"{t:.6f}.png"), value)
    for name, times, folder in (("rgb.txt", rgb_times, "rgb"), ("depth.txt", depth_times, "depth")):
        with open(os.path.join(root, name), "w") as f:
            f.write("# timestamp filename\n")
            f.writelines(f"{t:.6f} {folder}/{t:.6f}.png\n" for t in times)
            f.writelines(line + "\n" for line in extra_lines)


def metres(pair, layout):
    return decode_depth(pair[1], layout.encoding())


def test_tum_pairs_by_nearest_timestamp_and_reports_the_rest(tmp_path):
    r = [100.00, 100.10, 100.20, 100.30]
    d = [100.005, 100.113, 100.50, 100.301]      # 100.20 has none within 0.02 s; 100.50 no colour
    tum(tmp_path, r, d, value=10000, extra_lines=["not-a-timestamp rgb/x.png"])
    layout = make_layout("tum")
    rec = read_recording(str(tmp_path), layout, test_fraction=0.0)
    pairs = rec.train
    assert [os.path.basename(p[0]) for p in pairs] == ["100.000000.png", "100.100000.png", "100.300000.png"]
    assert [os.path.basename(p[1]) for p in pairs] == ["100.005000.png", "100.113000.png", "100.301000.png"]
    assert float(metres(pairs[0], layout)[0, 0]) == pytest.approx(2.0)   # 10000 / 5000 per metre
    reasons = rec.report.skipped
    assert any("rgb/100.200000.png" in p for p in reasons["colour frame without a depth frame within 0.02 s"])
    assert any("100.500000.png" in p for p in reasons["depth frame without a colour frame within 0.02 s"])
    assert "line is not 'timestamp filename'" in reasons
    # one-to-one: 100.20's nearer depth frames are taken by closer pairs; 100.50 is 0.3 s away
    assert len(read_recording(str(tmp_path), make_layout("tum", tolerance=0.25), 0.0).train) == 3
    assert len(read_recording(str(tmp_path), make_layout("tum", tolerance=0.35), 0.0).train) == 4


def test_association_is_one_to_one_closest_first():
    pairs = associate([(1.0, "a"), (1.01, "b")], [(1.009, "x")], 0.02)
    assert pairs == [(1.01, 1.009)]


def test_tum_timestamps_that_never_pair_are_one_error_line(tmp_path):
    tum(tmp_path, [10.0, 10.1], [20.0, 20.1])
    with pytest.raises(InputError, match=r"rgb\.txt and depth\.txt: no colour and depth timestamps within "
                                         r"0\.02 s \(closest 9\.900 s\)"):
        read_recording(str(tmp_path), make_layout("tum"))


def test_png16_pairs_by_stem_with_the_unit_given(tmp_path):
    for i in range(4):
        rgb(str(tmp_path / "color" / f"{i:04d}.png"), i)
        png16(str(tmp_path / "depth" / f"{i:04d}.png"), 1500 + i)
    png16(str(tmp_path / "depth" / "0099.png"), 1000)          # depth without a colour frame
    rgb(str(tmp_path / "color" / "0100.png"))                  # colour without depth
    (tmp_path / "depth" / "notes.txt").write_text("x")
    Image.fromarray(np.full((H, W), 7, np.uint8)).save(tmp_path / "color" / "0005.png")
    Image.fromarray(np.full((H, W), 7, np.uint8)).save(tmp_path / "depth" / "0005.png")   # 8-bit depth
    layout = make_layout("png16", unit=0.001)
    rec = read_recording(str(tmp_path), layout, test_fraction=0.25)
    assert len(rec.train) == 3 and len(rec.test) == 1 and rec.test[0][0].endswith("0003.png")  # the tail
    assert float(metres(rec.train[1], layout)[0, 0]) == pytest.approx(1.501)
    assert rec.size == (W, H)
    skipped = rec.report.skipped
    assert "depth without image" in skipped and "image without depth" in skipped
    assert any("notes.txt" in p for r, ps in skipped.items() for p in ps if r.startswith("not a .png"))
    assert any("16-bit" in r for r in skipped)
    # RealSense L515's 0.00025 m unit: the same files, a quarter of the metres
    quarter = make_layout("png16", unit=0.00025)
    assert float(metres(read_recording(str(tmp_path), quarter, 0.25).train[1], quarter)[0, 0]) == \
        pytest.approx(1.501 / 4)


def test_npy_is_metres_and_exr_is_skipped_with_the_reason(tmp_path):
    os.makedirs(tmp_path / "depth")
    for i in range(3):
        rgb(str(tmp_path / "rgb" / f"f{i}.png"), i)
        np.save(tmp_path / "depth" / f"f{i}.npy", np.full((H, W), 2.25 + i, np.float32))
    (tmp_path / "depth" / "f9.exr").write_bytes(b"v/1\x01")
    layout = make_layout("npy")
    rec = read_recording(str(tmp_path), layout, test_fraction=0.0)
    assert len(rec.train) == 3
    assert float(metres(rec.train[2], layout)[0, 0]) == pytest.approx(4.25)
    assert any(r.startswith("EXR depth: no EXR reader installed") for r in rec.report.skipped)


def test_kitti_sparse_depth_at_one_256th_metre_in_kittis_names(tmp_path):
    drive, frame = "2011_09_26_drive_0001_sync", "0000000005"
    rgb(str(tmp_path / "image" / f"{drive}_image_{frame}_image_02.png"))
    values = np.zeros((H, W), np.uint16)
    values[4:, ::3] = 256 * 20 + 128            # 20.5 m where the LiDAR returned, 0 elsewhere
    os.makedirs(tmp_path / "groundtruth_depth")
    Image.fromarray(values).save(tmp_path / "groundtruth_depth" / f"{drive}_groundtruth_depth_{frame}_image_02.png")
    rgb(str(tmp_path / "image" / "odd_name.png"))
    layout = make_layout("kitti")
    rec = read_recording(str(tmp_path), layout, test_fraction=0.0)
    d = metres(rec.train[0], layout)
    assert set(np.unique(d).tolist()) == {0.0, 20.5}
    assert any(r.startswith("name not") for r in rec.report.skipped)


def test_depth_at_another_resolution_than_the_colour_is_one_error_line(tmp_path):
    for i in range(2):
        rgb(str(tmp_path / "rgb" / f"{i}.png"))
        png16(str(tmp_path / "depth" / f"{i}.png"), 1000, size=(W * 2, H * 2))
    with pytest.raises(InputError, match=r"depth/0\.png: depth is 16x12, the colour .*rgb/0\.png is 8x6; expected "
                                         r"depth aligned to colour"):
        read_recording(str(tmp_path), make_layout("png16"))


@pytest.mark.parametrize("unit, value, what", [(1.0, 5000, "above 1000 m"), (1e-7, 5000, "below 1 mm"),
                                               (0.001, 0, "every depth is 0")])
def test_a_unit_that_makes_no_plausible_metres_is_one_error_line(tmp_path, unit, value, what):
    for i in range(2):
        rgb(str(tmp_path / "rgb" / f"{i}.png"))
        png16(str(tmp_path / "depth" / f"{i}.png"), value)
    with pytest.raises(InputError, match=what) as err:
        read_recording(str(tmp_path), make_layout("png16", unit=unit))
    assert "\n" not in str(err.value) and "depth/0.png" in str(err.value)


def test_unknown_layout_and_bad_unit_name_the_option():
    with pytest.raises(InputError, match="--layout 'bag': expected one of tum, png16, npy, kitti"):
        make_layout("bag")
    with pytest.raises(InputError, match="--depth-unit -1"):
        make_layout("png16", unit=-1)
