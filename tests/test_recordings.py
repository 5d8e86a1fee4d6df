"""The recording readers (data/recordings.py): each layout on small files written in that layout,
their units, pairing and skips, and the one-line errors of bad recordings; EXR depth
(loaders.read_exr_depth) on real files written with the OpenEXR package."""
import os

import numpy as np
import OpenEXR
import pytest
from PIL import Image

from base.errors import InputError
from data.recordings import associate, make_layout, read_recording
from loaders import DatasetFormatError, decode_depth, read_exr_depth

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


def exr(path, channels, half=False):
    """An OpenEXR file of ``channels`` (name -> (H, W) array), float or half."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    dtype = np.float16 if half else np.float32
    OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage},
                 {n: np.ascontiguousarray(v, dtype=dtype) for n, v in channels.items()}).write(str(path))
    return str(path)


def metres_map(seed=0):
    return np.random.default_rng(seed).uniform(0.3, 40.0, (H, W)).astype(np.float32)


def test_exr_float_depth_in_metres_reads_back_exactly(tmp_path):
    d = metres_map()
    path = exr(tmp_path / "z.exr", {"Z": d})
    got = read_exr_depth(path)
    assert got.dtype == np.float32 and got.shape == (H, W)
    np.testing.assert_array_equal(got, d)
    np.testing.assert_array_equal(decode_depth(path, make_layout("npy").encoding()), d)   # the npy layout's unit 1
    # a unit other than metres (--depth-unit): value x unit, as every layout
    np.testing.assert_array_equal(decode_depth(path, make_layout("npy", unit=0.001).encoding()),
                                  (d.astype(np.float64) * 0.001).astype(np.float32))
    for name in ("depth", "Y", "R", "anything"):           # the only channel, whatever its name
        np.testing.assert_array_equal(read_exr_depth(exr(tmp_path / f"{name}.exr", {name: d})), d)


def test_exr_half_depth_reads_within_half_precision(tmp_path):
    d = metres_map(1)
    got = read_exr_depth(exr(tmp_path / "half.exr", {"Z": d}, half=True))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, d.astype(np.float16).astype(np.float32))   # each half exactly
    np.testing.assert_allclose(got, d, rtol=2.0 ** -11)                           # half's rounding


def test_exr_non_finite_and_non_positive_depth_is_no_measurement(tmp_path):
    d = metres_map(2)
    bad = [(0, 0, np.nan), (0, 1, np.inf), (1, 0, -np.inf), (1, 1, -2.5), (2, 2, 0.0), (2, 3, -0.0)]
    for y, x, v in bad:
        d[y, x] = v
    for half in (False, True):
        got = read_exr_depth(exr(tmp_path / f"bad{half}.exr", {"Z": d}, half=half))
        assert all(got[y, x] == 0 and not np.signbit(got[y, x]) for y, x, _ in bad)
        keep = np.ones((H, W), bool)
        keep[tuple(zip(*[(y, x) for y, x, _ in bad]))] = False
        assert (got[keep] > 0).all()


def test_exr_rgb_with_equal_channels_and_a_render_with_z_read(tmp_path):
    d = metres_map(3)
    np.testing.assert_array_equal(read_exr_depth(exr(tmp_path / "rgb.exr", {"R": d, "G": d, "B": d})), d)
    rgba = exr(tmp_path / "rgba.exr", {"R": d, "G": d, "B": d, "A": np.ones((H, W))}, half=True)
    np.testing.assert_array_equal(read_exr_depth(rgba), d.astype(np.float16).astype(np.float32))
    grey = exr(tmp_path / "ya.exr", {"Y": d, "A": np.ones((H, W))})
    np.testing.assert_array_equal(read_exr_depth(grey), d)
    colour = np.random.default_rng(4).uniform(0, 1, (3, H, W))
    render = exr(tmp_path / "render.exr", {"R": colour[0], "G": colour[1], "B": colour[2], "A": colour[0], "Z": d})
    np.testing.assert_array_equal(read_exr_depth(render), d)         # a render's Z beside its colour


def test_exr_without_one_depth_channel_is_one_error_line(tmp_path):
    d = metres_map(5)
    two = exr(tmp_path / "flow.exr", {"U": d, "V": d + 1})
    with pytest.raises(DatasetFormatError, match=r"flow\.exr: EXR channels U, V; expected one depth channel") as err:
        read_exr_depth(two)
    assert "\n" not in str(err.value) and "or R, G, B holding the same depth" in str(err.value)
    colour = exr(tmp_path / "colour.exr", {"R": d, "G": d, "B": d * 0.5})
    with pytest.raises(DatasetFormatError, match=r"colour\.exr: EXR channels B, G, R with R, G and B different"):
        read_exr_depth(colour)
    both = exr(tmp_path / "both.exr", {"Z": d, "depth": d})
    with pytest.raises(DatasetFormatError, match=r"both\.exr: EXR channels Z, depth;"):
        read_exr_depth(both)
    (tmp_path / "corrupt.exr").write_bytes(b"v/1\x01 not an exr")
    with pytest.raises(DatasetFormatError, match=r"corrupt\.exr: not a readable OpenEXR file"):
        read_exr_depth(str(tmp_path / "corrupt.exr"))


def test_npy_layout_reads_npy_and_exr_depth_side_by_side(tmp_path):
    os.makedirs(tmp_path / "depth")
    for i in range(4):
        rgb(str(tmp_path / "rgb" / f"f{i}.png"), i)
    np.save(tmp_path / "depth" / "f0.npy", np.full((H, W), 2.25, np.float32))
    exr(tmp_path / "depth" / "f1.exr", {"Z": np.full((H, W), 3.25)})
    np.save(tmp_path / "depth" / "f2.npy", np.full((H, W), 4.25, np.float32))
    exr(tmp_path / "depth" / "f2.exr", {"Z": np.full((H, W), 99.0)})               # the stem's .npy is read
    exr(tmp_path / "depth" / "f3.exr", {"R": np.full((H, W), 5.25)}, half=True)
    rgb(str(tmp_path / "rgb" / "f4.png"))
    (tmp_path / "depth" / "f4.exr").write_bytes(b"v/1\x01")                         # corrupt: skipped
    rgb(str(tmp_path / "rgb" / "f5.png"))
    exr(tmp_path / "depth" / "f5.exr", {"U": np.ones((H, W)), "V": np.ones((H, W))})  # no depth channel: skipped
    layout = make_layout("npy")
    rec = read_recording(str(tmp_path), layout, test_fraction=0.25)
    pairs = rec.train + rec.test
    assert [os.path.basename(d) for _, d in pairs] == ["f0.npy", "f1.exr", "f2.npy", "f3.exr"]
    assert rec.test == [pairs[-1]] and rec.size == (W, H)
    assert [float(metres(p, layout)[0, 0]) for p in pairs] == [2.25, 3.25, 4.25, 5.25]
    assert rec.depth_percentiles["max"] == 5.25
    skipped = rec.report.skipped
    assert skipped["another depth file of this stem is read (first of .npy, .exr)"] == \
        [str(tmp_path / "depth" / "f2.exr")]
    assert skipped["not a readable OpenEXR file (RuntimeError)"] == [str(tmp_path / "depth" / "f4.exr")]
    no_channel = [ps for r, ps in skipped.items() if r.startswith("EXR channels U, V; expected one depth channel")]
    assert no_channel == [[str(tmp_path / "depth" / "f5.exr")]]
    assert layout.encoding() == {"kind": "npy", "scale": 1.0}   # the domain's rows decode .npy and .exr alike


def test_exr_depth_in_a_png_layout_is_skipped_with_the_layout_to_use(tmp_path):
    for i in range(2):
        rgb(str(tmp_path / "rgb" / f"{i}.png"), i)
        png16(str(tmp_path / "depth" / f"{i}.png"), 1500)
    exr(tmp_path / "depth" / "2.exr", {"Z": np.full((H, W), 1.5)})
    rec = read_recording(str(tmp_path), make_layout("png16"), test_fraction=0.0)
    assert len(rec.train) == 2
    assert rec.report.skipped["EXR depth (float metres) in a 16-bit PNG layout: read it with --layout npy"] == \
        [str(tmp_path / "depth" / "2.exr")]


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
