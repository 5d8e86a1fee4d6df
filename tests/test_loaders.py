"""Decoding of every format, joint transforms (nearest-only depth), datasets, loaders, error paths;
index CSVs (BOM, encoding, a header row), the validation split (a file listed twice)."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))

from base import domains as dom
from base.images import IMAGENET_MEAN, IMAGENET_STD, scaled
import helpers
import loaders as L
from helpers import make_data_root
from loaders import DatasetFormatError, get_dataset, get_loader

SCALE = 0.25


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A data root with NYU, KITTI and ScanNet in their real formats (module-wide, read-only)."""
    r = str(tmp_path_factory.mktemp("data"))
    info = {"nyu": helpers.write_nyu_release(r), "kitti": helpers.write_kitti(r), "scannet": helpers.write_scannet(r)}
    return r, info


# ------------------------------------------------------------------------------ decoding
def test_nyu_decoding(root):
    r, info = root
    ds = get_dataset("N", "train", r, scale=SCALE)
    for i, (_, _, v) in enumerate(info["nyu"]["train"]):
        _, depth = ds.load(i)
        np.testing.assert_allclose(depth, v * 10.0 / 255.0, rtol=1e-6, atol=1e-6)   # 8-bit: 10/255 m steps
    ds = get_dataset("N", "test", r, scale=SCALE)
    for i, (_, _, v) in enumerate(info["nyu"]["test"]):
        _, depth = ds.load(i)
        np.testing.assert_allclose(depth, v / 1000.0, rtol=1e-6, atol=1e-7)           # 16-bit mm


def test_kitti_and_scannet_decoding(root):
    r, info = root
    ds = get_dataset("K", "test", r, scale=SCALE)
    for i, (_, _, v) in enumerate(info["kitti"]["test"]):
        image, depth = ds.load(i)
        assert np.array_equal(depth, (v / 256.0).astype(np.float32))                  # exact: /256
        assert image.size == (v.shape[1], v.shape[0])
    ds = get_dataset("S", "train", r, scale=SCALE)
    image, depth = ds.load(0)
    v = info["scannet"]["train"][0][2]
    np.testing.assert_allclose(depth, v / 1000.0, rtol=1e-6)
    assert image.size == (v.shape[1], v.shape[0])   # colour resized to the depth size


def test_h5_rows_exact(tmp_path):
    out = helpers.write_nyu_h5(str(tmp_path))
    rows = [(out["train"][0][0], out["train"][0][0]), (out["train"][1][0], "")]   # depth column repeated / empty
    helpers.write_csv(str(tmp_path / "nyu2_train.csv"), rows)
    ds = get_dataset("N", "train", str(tmp_path), scale=SCALE)
    for i in range(2):
        image, depth = ds.load(i)
        assert np.array_equal(depth, out["train"][i][2])
        assert np.array_equal(np.asarray(image), out["train"][i][1])
    h5 = L.NYUH5Dataset(str(tmp_path / "nyu2_train.csv"), str(tmp_path), scale=SCALE)
    assert h5[1]["depth"].shape == (1, 58, 76)


def test_mat_transposed_and_split(tmp_path):
    mat = str(tmp_path / "nyu_depth_v2_labeled.mat")
    rgbs, deps = helpers.write_nyu_mat(mat, n=3)
    for i in range(3):
        image, depth = L.read_mat_frame(mat, i + 1)
        assert np.array_equal(np.asarray(image), rgbs[i]) and np.array_equal(depth, deps[i])
    (tmp_path / "test_idx.txt").write_text("2\n3\n")
    test = L.NYUMatDataset.from_mat(mat, "test", str(tmp_path / "test_idx.txt"), scale=SCALE)
    train = L.NYUMatDataset.from_mat(mat, "train", str(tmp_path / "test_idx.txt"), scale=SCALE)
    assert [r.depth for r in test.rows] == [2, 3] and [r.depth for r in train.rows] == [1]
    assert np.array_equal(test.load(0)[1], deps[1])
    # the official splits.mat is MATLAB v5 (scipy reads it): (n, 1) float columns of 1-based indices
    from scipy.io import savemat
    savemat(str(tmp_path / "splits.mat"), {"trainNdxs": np.array([[1.0]]), "testNdxs": np.array([[2.0], [3.0]])})
    test = L.NYUMatDataset.from_mat(mat, "test", str(tmp_path / "splits.mat"), scale=SCALE)
    assert [r.depth for r in test.rows] == [2, 3]
    # CSV form: `file.mat,<1-based frame>`
    helpers.write_csv(str(tmp_path / "nyu2_test.csv"), [("nyu_depth_v2_labeled.mat", "3")])
    ds = get_dataset("N", "test", str(tmp_path), scale=SCALE)
    assert np.array_equal(ds.load(0)[1], deps[2])
    helpers.write_csv(str(tmp_path / "nyu2_test.csv"), [("nyu_depth_v2_labeled.mat", "9")])
    with pytest.raises(DatasetFormatError, match="frame 9 outside 1..3"):
        L.NYUMatDataset(str(tmp_path / "nyu2_test.csv"), str(tmp_path), split="test")


def test_load_rgb_modes(tmp_path):
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(g).save(tmp_path / "g.png")
    Image.fromarray(np.dstack([g, g, g, g])).save(tmp_path / "rgba.png")
    Image.fromarray(g).convert("P").save(tmp_path / "p.png")
    Image.fromarray(g.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    for name in ("g.png", "rgba.png", "p.png", "g16.png"):
        im = L.load_rgb(str(tmp_path / name))
        a = np.asarray(im)
        assert im.mode == "RGB" and a.shape == (3, 4, 3), name
        assert np.abs(a[..., 0].astype(int) - g).max() <= 1, name
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(DatasetFormatError, match="x.png"):
        L.load_rgb(str(tmp_path / "x.png"))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        L.load_rgb(str(tmp_path / "missing.png"))


# ------------------------------------------------------------------------------ transforms
def _frame(hw, seed, sparse=False):
    """(PIL image, depth) with unique depth values (sparse: 10 % valid)."""
    rng = np.random.default_rng(seed)
    depth = rng.permutation(hw[0] * hw[1]).reshape(hw).astype(np.float32) / 100.0 + 0.01
    if sparse:
        depth[rng.random(hw) > 0.1] = 0
    return Image.fromarray(helpers.rgb_pattern(hw, seed)), depth


@pytest.mark.parametrize("spec, hw, sparse", [(dom.NYU, (48, 64), False), (dom.SCANNET, (48, 64), False),
                                              (dom.KITTI, (96, 320), True)])
@pytest.mark.parametrize("scale", [0.25, 0.5])
def test_train_depth_nearest_only(spec, hw, sparse, scale):
    if spec is dom.KITTI and scale == 0.5:
        hw = (176, 600)
    t = L.build_transform(spec, train=True, scale=scale)
    image, depth = _frame(hw, 1, sparse)
    src = np.unique(depth)
    for seed in range(6):
        torch.manual_seed(seed)
        img, d = t(image, depth)
        assert img.shape[1:] == d.shape[1:] == (scaled(spec.input_size[0], scale), scaled(spec.input_size[1], scale))
        out = d.numpy().ravel()
        assert np.isin(out[out > 0], src).all(), "depth value invented by resampling"


def test_nyu_rotation_fills_zero():
    t = L.build_transform(dom.NYU, train=True, scale=0.5)
    image, depth = _frame((240, 320), 0)   # no holes, nearest resize: zeros can only come from rotation
    zeros = []
    for seed in range(8):
        torch.manual_seed(seed)
        zeros.append(float((t(image, depth)[1] == 0).float().mean()))
    assert max(zeros) > 0 and max(zeros) < 0.1


def test_sparse_stays_sparse():
    t = L.build_transform(dom.KITTI, train=True, scale=SCALE)
    image, depth = _frame((80, 400), 3, sparse=True)
    src_frac = (depth > 0).mean()
    fr = []
    for seed in range(10):
        torch.manual_seed(seed)
        fr.append(float((t(image, depth)[1] > 0).float().mean()))
    assert abs(np.mean(fr) - src_frac) < 0.03


def test_kitti_crop_anchored_at_bottom():
    h, w = 100, 400
    rows = np.repeat(np.arange(1, h + 1, dtype=np.float32)[:, None], w, 1)   # value = row number
    image = Image.fromarray(helpers.rgb_pattern((h, w), 0))
    t = L.build_transform(dom.KITTI, train=True, scale=SCALE)   # crop 120x80
    starts = set()
    for seed in range(8):
        torch.manual_seed(seed)
        _, d = t(image, rows)
        assert d.shape == (1, 80, 120)
        assert (d[0, -1] == h).all() and (d[0, 0] == h - 80 + 1).all()
        cols = np.repeat(np.arange(1, w + 1, dtype=np.float32)[None], h, 0)
        torch.manual_seed(seed)
        _, c = t(image, cols)
        starts.add(int(c[0].min()))
    assert len(starts) > 1   # random horizontal position
    te = L.build_transform(dom.KITTI, train=False, scale=SCALE)
    _, d = te(image, rows)
    assert (d[0, -1] == h).all()
    cols = np.repeat(np.arange(1, w + 1, dtype=np.float32)[None], h, 0)
    assert int(te(image, cols)[1].min()) == (w - 120) // 2 + 1   # centred horizontally


def test_full_scale_shapes():
    cases = [(dom.NYU, (480, 640), (480, 640)), (dom.KITTI, (352, 1216), (352, 1216)),
             (dom.SCANNET, (480, 640), (480, 640))]
    for spec, ihw, dhw in cases:
        image, depth = Image.fromarray(helpers.rgb_pattern(ihw, 0)), np.ones(dhw, np.float32)
        for train in (True, False):
            img, d = L.build_transform(spec, train)(image, depth)
            assert tuple(img.shape) == (3,) + spec.input_size and tuple(d.shape) == (1,) + spec.input_size
    full = L.build_transform(dom.KITTI, False, full_frame=True)(Image.fromarray(helpers.rgb_pattern((352, 1216), 0)),
                                                               np.ones((352, 1216), np.float32))
    assert full[1].shape == (1, 352, 1216)
    assert scaled(304, 0.5) == 152 and scaled(228, 0.5) == 114 and scaled(228, 0.25) % 2 == 0


def test_test_transform_deterministic_and_normalized(root):
    r, _ = root
    for d in "NKS":
        ds = get_dataset(d, "test", r, scale=SCALE)
        torch.manual_seed(0)
        a = ds[0]
        torch.manual_seed(1)
        b = ds[0]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["depth"], b["depth"])
    # test image = plain ImageNet normalisation of the cropped pixels
    ds = get_dataset("K", "test", r, scale=SCALE)
    raw = np.asarray(ds.load(0)[0], dtype=np.float32) / 255.0
    h, w = raw.shape[:2]
    x = int(round((w - 120) / 2.0))
    crop = torch.from_numpy(raw[h - 80:, x:x + 120]).permute(2, 0, 1)
    exp = (crop - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(ds[0]["image"], exp, atol=1e-6)


@pytest.mark.parametrize("letter", ["N", "K", "S"])
def test_test_items_say_where_their_crop_sits(root, letter):
    """The window of a test item cuts exactly its depth out of the full-frame item's depth, so the
    Eigen/Garg crops (defined on full frames) are evaluated where they belong."""
    r, _ = root
    ds = get_dataset(letter, "test", r, scale=SCALE)
    cropped = ds[0]
    if letter == "K":  # KITTI crops the frame as stored (full_frame would rescale it)
        full_depth = torch.from_numpy(ds.load(0)[1])[None]
    else:
        full = get_dataset(letter, "test", r, scale=SCALE, full_frame=True)[0]
        full_depth = full["depth"]
        assert full["window"].tolist() == [0, 0, *full_depth.shape[-2:]]
    top, left, fh, fw = cropped["window"].tolist()
    assert (fh, fw) == tuple(full_depth.shape[-2:])
    h, w = cropped["depth"].shape[-2:]
    assert (h, w) != (fh, fw)
    assert torch.equal(full_depth[:, top:top + h, left:left + w], cropped["depth"])
    batch = next(iter(get_loader(get_dataset(letter, "test", r, scale=SCALE), batch_size=2)))
    assert batch["window"].shape == (2, 4)


def test_train_transform_seeded(root):
    r, _ = root
    ds = get_dataset("N", "train", r, scale=SCALE)
    torch.manual_seed(5)
    a = ds[1]
    torch.manual_seed(5)
    b = ds[1]
    torch.manual_seed(6)
    c = ds[1]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["depth"], b["depth"])
    assert not torch.equal(a["image"], c["image"])


def test_items_and_replay(root):
    r, _ = root
    item = get_dataset("S", "train", r, scale=SCALE)[0]
    assert set(item) == {"image", "depth", "domain", "path", "window"}
    assert item["domain"] == "scannet" and item["path"] == "scene0000_00/color/0.jpg"
    assert item["image"].dtype == torch.float32 and item["depth"].dtype == torch.float32
    rep = get_dataset("N", "replay", r, scale=SCALE)
    assert rep.train and rep.encoding == dom.NYU.encoding("train")
    assert not get_dataset("N", "test", r, scale=SCALE).train
    assert get_dataset("N", "test", r, train=True, scale=SCALE).train


# ------------------------------------------------------------------------------ loaders
def _paths(loader):
    return [p for batch in loader for p in batch["path"]]


def test_loader_order_deterministic(root):
    r, _ = root
    ds = get_dataset("N", "train", r, scale=SCALE)
    a = _paths(get_loader(ds, 2, shuffle=True, seed=3))
    b = _paths(get_loader(ds, 2, shuffle=True, seed=3))
    assert a == b and sorted(a) == sorted(x.image_raw for x in ds.rows)
    dl = get_loader(ds, 3, drop_last=True)
    assert len(dl) == 1 and not dl.pin_memory
    batch = next(iter(dl))
    assert batch["image"].shape == (3, 3, 58, 76) and batch["depth"].shape == (3, 1, 58, 76)


def test_loader_workers_deterministic(root):
    r, _ = root
    ds = get_dataset("K", "train", r, scale=SCALE)
    runs = []
    for _ in range(2):
        dl = get_loader(ds, 2, shuffle=True, workers=2, seed=7)
        assert dl.persistent_workers
        runs.append([(tuple(b["path"]), b["image"].sum().item()) for b in dl])
    assert runs[0] == runs[1]


# ------------------------------------------------------------------------------ custom domains
def test_custom_domain_from_root(tmp_path, clean_registry):
    (tmp_path / "domains.json").write_text(json.dumps([{
        "name": "office", "letter": "O", "input_size": [32, 48], "max_depth": 6.0,
        "depth_encoding": {"kind": "png", "scale": 0.0002, "bits": 16}}]))
    v = helpers.dense_values((40, 56), 100, 30000, 0)
    helpers.write_rgb(str(tmp_path / "o/rgb/a.png"), helpers.rgb_pattern((40, 56), 0))
    helpers.write_png16(str(tmp_path / "o/depth/a.png"), v)
    helpers.write_csv(str(tmp_path / "office_train.csv"), [("o/rgb/a.png", "o/depth/a.png")])
    ds = get_dataset("O", "train", str(tmp_path))
    assert isinstance(ds, L.GenericPNGDataset)
    np.testing.assert_allclose(ds.load(0)[1], v * 0.0002, rtol=1e-6)
    item = ds[0]
    assert item["domain"] == "office" and item["depth"].shape == (1, 32, 48)
    assert np.isin(item["depth"].numpy(), np.append(ds.load(0)[1], 0)).all()


def test_absolute_paths_and_alt_root(tmp_path, root):
    r, info = root
    img, dep, _ = info["kitti"]["train"][0]
    helpers.write_csv(str(tmp_path / "kitti_train_sparse.csv"), [(os.path.join(r, img), os.path.join(r, dep))])
    assert len(get_dataset("K", "train", str(tmp_path), scale=SCALE)) == 1
    # The authors' KITTI CSVs are relative to <data_root>/kitti.
    os.symlink(r, str(tmp_path / "kitti"))
    helpers.write_csv(str(tmp_path / "kitti_train_sparse.csv"), [(img, dep)])
    ds = get_dataset("K", "train", str(tmp_path), scale=SCALE)
    assert ds.rows[0].image == os.path.join(str(tmp_path), "kitti", img)


# ------------------------------------------------------------------------------ error paths
def test_missing_root_and_csv(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        get_dataset("N", "train", str(tmp_path / "nope"))
    assert "nope" in str(e.value) and "prepare_data.py" in str(e.value) and "synthetic.py" in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        get_dataset("K", "test", str(tmp_path))
    assert "kitti_val_select.csv" in str(e.value) and "prepare_data.py kitti" in str(e.value)
    with pytest.raises(FileNotFoundError, match="prepare_data.py replay --domain S"):
        get_dataset("S", "replay", str(tmp_path))
    with pytest.raises(ValueError, match="split"):
        get_dataset("N", "val", str(tmp_path))


def _copy_nyu(root, tmp_path):
    r, info = root
    shutil.copytree(os.path.join(r, "data"), str(tmp_path / "data"))
    return info["nyu"]


def test_missing_file_names_csv_line_path(tmp_path, root):
    nyu = _copy_nyu(root, tmp_path)
    rows = [r[:2] for r in nyu["train"]]
    rows[2] = (rows[2][0], "data/nyu2_train/nowhere/1.png")
    helpers.write_csv(str(tmp_path / "nyu2_train.csv"), [rows[0], rows[1], ("", ""), rows[2], rows[3]])
    with pytest.raises(FileNotFoundError) as e:
        get_dataset("N", "train", str(tmp_path))
    msg = str(e.value)
    assert "nyu2_train.csv" in msg and "line 4" in msg and "data/nyu2_train/nowhere/1.png" in msg


@pytest.mark.parametrize("row", [("a.jpg", "b.png", "c.png"), ("a.jpg",), ("a.jpg", "")])
def test_malformed_row(tmp_path, row):
    helpers.write_csv(str(tmp_path / "nyu2_test.csv"), [row])
    with pytest.raises(DatasetFormatError) as e:
        get_dataset("N", "test", str(tmp_path))
    assert "nyu2_test.csv" in str(e.value) and "line 1" in str(e.value) and "2 comma-separated" in str(e.value)


def test_wrong_depth_mode(tmp_path, root):
    nyu = _copy_nyu(root, tmp_path)
    test_img, test_dep, _ = nyu["test"][0]
    train_img, train_dep, _ = nyu["train"][0]
    cases = [
        # (csv name, split, image, depth file written, expected message)
        ("nyu2_test.csv", "test", test_img, "rgb", "mode 'RGB'"),
        ("nyu2_test.csv", "test", test_img, "8bit", "expected a 16-bit"),
        ("nyu2_train.csv", "train", train_img, "16bit", "expected an 8-bit"),
    ]
    for csv_name, split, img, kind, expect in cases:
        bad = str(tmp_path / f"bad_{kind}.png")
        if kind == "rgb":
            helpers.write_rgb(bad, helpers.rgb_pattern(helpers.NYU_HW, 0))
        elif kind == "8bit":
            helpers.write_png8(bad, np.ones(helpers.NYU_HW))
        else:
            helpers.write_png16(bad, np.ones(helpers.NYU_HW) * 1000)
        helpers.write_csv(str(tmp_path / csv_name), [(img, f"bad_{kind}.png")])
        ds = get_dataset("N", split, str(tmp_path), scale=SCALE)
        with pytest.raises(DatasetFormatError) as e:
            ds[0]
        msg = str(e.value)
        assert expect in msg and csv_name in msg and "line 1" in msg and img in msg, msg


def test_kitti_8bit_and_size_mismatch(tmp_path, root):
    r, info = root
    img, dep, v = info["kitti"]["test"][0]
    helpers.write_png8(str(tmp_path / "gt8.png"), np.ones(helpers.KITTI_HW))
    helpers.write_png16(str(tmp_path / "small.png"), np.ones((50, 60)))
    for name, expect in (("gt8.png", "expected a 16-bit"), ("small.png", "expects equal sizes")):
        helpers.write_csv(str(tmp_path / "kitti_val_select.csv"), [(os.path.join(r, img), name)])
        with pytest.raises(DatasetFormatError, match=expect):
            get_dataset("K", "test", str(tmp_path), scale=SCALE)[0]


def test_unreadable_image_at_getitem(tmp_path, root):
    nyu = _copy_nyu(root, tmp_path)
    img, dep, _ = nyu["test"][1]
    (tmp_path / img).write_bytes(b"garbage")
    helpers.write_csv(str(tmp_path / "nyu2_test.csv"), [r[:2] for r in nyu["test"]])
    ds = get_dataset("N", "test", str(tmp_path), scale=SCALE)
    ds[0]
    with pytest.raises(DatasetFormatError) as e:
        ds[1]
    assert "nyu2_test.csv: line 2" in str(e.value) and img in str(e.value)


def test_crop_larger_than_image(tmp_path, root):
    r, info = root
    img, dep, _ = info["kitti"]["test"][0]
    helpers.write_csv(str(tmp_path / "kitti_val_select.csv"), [(os.path.join(r, img), os.path.join(r, dep))])
    with pytest.raises(DatasetFormatError, match="smaller than the 480x320 crop"):
        get_dataset("K", "test", str(tmp_path), scale=1.0)[0]


# ---- index CSVs, bit depths, a validation split --------------------------------------------------
def test_index_csv_encoding_bom_and_header(tmp_path):
    from loaders import DatasetFormatError, read_index_csv
    make_data_root(tmp_path, letters="N", n_train=2, n_test=1, n_replay=1)
    rows = (tmp_path / "nyu2_train.csv").read_text()
    (tmp_path / "bom.csv").write_bytes("\ufeff".encode() + rows.encode())
    assert len(read_index_csv(str(tmp_path / "bom.csv"), str(tmp_path))) == 2
    (tmp_path / "latin.csv").write_bytes(rows.encode() + "data/caf\u00e9.jpg,x.png\n".encode("latin-1"))
    with pytest.raises(DatasetFormatError, match=r"latin\.csv: line 3: .*UTF-8"):
        read_index_csv(str(tmp_path / "latin.csv"), str(tmp_path))
    (tmp_path / "header.csv").write_text("image_path,depth_path\n" + rows)
    with pytest.raises(DatasetFormatError, match="header row"):
        read_index_csv(str(tmp_path / "header.csv"), str(tmp_path))


def test_bit_depth_error_text(tmp_path):
    from loaders import DatasetFormatError, _png_depth_array
    img = Image.new("RGB", (4, 4))
    with pytest.raises(DatasetFormatError) as err:
        _png_depth_array(img, 16, "d.png", "test")
    assert "16-bit depth" in str(err.value) and "16/16" not in str(err.value)


def test_a_file_listed_twice_is_never_both_validated_and_trained():
    from types import SimpleNamespace
    from loaders import split_validation

    class Rows(list):  # the part of a training dataset split_validation reads
        @property
        def rows(self):
            return self

    for names, n_val in ((("a.jpg", "a.jpg"), 1), (("a.jpg", "b.jpg", "a.jpg", "c.jpg", "b.jpg", "d.jpg"), 2)):
        rows = Rows(SimpleNamespace(image=n) for n in names)
        for seed in range(6):
            train, val = split_validation(rows, set(), n_val, seed)
            held = {rows[i].image for i in val}
            assert len(held) == n_val and not held & {rows[i].image for i in train}, (names, seed, train, val)
