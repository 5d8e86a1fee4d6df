"""Domain specs, registry, learning orders and custom-domain JSON files (fields of the wrong type);
a custom domain carried by the checkpoint that learned it, usable by predict.py and the demo."""

import json

import pytest
import torch
from PIL import Image


from base import domains as dom
from base.domains import DomainSpec, get_domain, parse_order, register_domain
from cli import predict
from helpers import make_checkpoint, predict_args


def test_builtin_domains():
    n, k, s = get_domain("N"), get_domain("kitti"), get_domain("s")
    assert (n.name, n.letter, k.name, s.name) == ("nyu", "N", "kitti", "scannet")
    assert (n.train_csv, n.test_csv, n.replay_csv) == ("nyu2_train.csv", "nyu2_test.csv", "replay_nyu.csv")
    assert (k.train_csv, k.test_csv, k.replay_csv) == ("kitti_train_sparse.csv", "kitti_val_select.csv", "replay_kitti.csv")
    assert (s.train_csv, s.test_csv, s.replay_csv) == ("scannet_train.csv", "scannet_test.csv", "replay_scannet.csv")
    assert (n.min_depth, n.max_depth, k.max_depth, s.max_depth) == (1e-3, 10.0, 80.0, 10.0)
    assert n.input_size == (228, 304) and k.input_size == (320, 480) and s.input_size == (228, 304)
    assert (n.eval_crop, k.eval_crop, s.eval_crop) == ("eigen", "garg", "none")
    assert (n.transform, k.transform, s.transform) == ("nyu", "kitti", "scannet")
    assert (n.source, k.source, s.source) == ("nyu_csv", "kitti", "scannet")
    assert "6 m" in s.description


def test_builtin_encodings():
    n, k, s = dom.NYU, dom.KITTI, dom.SCANNET
    assert n.encoding("train") == {"kind": "png", "scale": 10 / 255, "bits": 8}
    assert n.encoding("replay") == n.encoding("train")   # replay rows are training rows
    assert n.encoding("test") == {"kind": "png", "scale": 0.001, "bits": 16}
    assert k.encoding("test")["scale"] == 1 / 256 and s.encoding("train")["scale"] == 0.001
    with pytest.raises(ValueError):
        n.encoding("val")


def test_get_domain_errors_list_known():
    with pytest.raises(ValueError) as e:
        get_domain("X")
    assert "N/nyu" in str(e.value) and "K/kitti" in str(e.value) and "S/scannet" in str(e.value)
    assert get_domain(dom.NYU) is dom.NYU


def test_parse_order():
    assert [s.letter for s in parse_order("NKS")] == ["N", "K", "S"]
    assert [s.letter for s in parse_order("sn")] == ["S", "N"]
    assert [s.name for s in parse_order("kitti, nyu")] == ["kitti", "nyu"]
    with pytest.raises(ValueError, match="repeats N"):
        parse_order("NKN")
    with pytest.raises(ValueError, match="unknown domain"):
        parse_order("NQ")
    with pytest.raises(ValueError):
        parse_order("")


def test_register_rejects_duplicates(clean_registry):
    spec = DomainSpec("office", "O", "o_train.csv", "o_test.csv", "o_replay.csv")
    register_domain(spec)
    register_domain(spec)  # identical: no-op
    assert get_domain("o") is spec and spec in dom.all_domains()
    with pytest.raises(ValueError, match="already used"):
        register_domain(DomainSpec("office2", "O", "a.csv", "b.csv", "c.csv"))
    with pytest.raises(ValueError, match="already used"):
        register_domain(DomainSpec("nyu", "Q", "a.csv", "b.csv", "c.csv"))
    with pytest.raises(ValueError):
        dom.unregister_domain("N")


def test_spec_validation_names_field():
    with pytest.raises(ValueError, match="letter"):
        DomainSpec("x", "AB", "a", "b", "c")
    with pytest.raises(ValueError, match="transform"):
        DomainSpec("x", "X", "a", "b", "c", transform="foo")
    with pytest.raises(ValueError, match="max_depth"):
        DomainSpec("x", "X", "a", "b", "c", min_depth=5, max_depth=1)
    with pytest.raises(ValueError, match="depth_encoding"):
        DomainSpec("x", "X", "a", "b", "c", depth_encoding={"kind": "exr"})


def test_json_round_trip(tmp_path, clean_registry):
    spec = DomainSpec("office", "O", "office_train.csv", "office_test.csv", "replay_office.csv",
                      max_depth=8.0, input_size=(224, 288), transform="scannet",
                      depth_encoding={"train": {"kind": "png", "scale": 0.0002, "bits": 16},
                                      "test": {"kind": "npy", "scale": 1.0}},
                      rgb_to_depth_size=True, resize=(240, 320), description="my office")
    path = tmp_path / "office.json"
    path.write_text(json.dumps(spec.to_dict()))
    loaded = dom.load_domain_file(str(path))
    assert loaded == spec and get_domain("office") == spec


def test_saved_domains_keep_their_numbers_exactly(tmp_path, clean_registry):
    """domains.json is a record, not a report: a KITTI-style depth scale of 1/256 m per unit
    (0.00390625) must not come back rounded to the report files' six digits."""
    spec = DomainSpec("street", "T", "street_train.csv", "street_test.csv", "replay_street.csv", depth_encoding={"kind": "png", "scale": 1 / 256, "bits": 16}, max_depth=80.0)
    path = tmp_path / "domains.json"
    dom.save_domains_file([spec], str(path))
    loaded = dom.load_domains_file(str(path), register=False)
    assert loaded == [spec] and loaded[0].encoding("test")["scale"] == 0.00390625


def test_json_defaults(tmp_path, clean_registry):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"name": "lab", "letter": "l"}))
    spec = dom.load_domain_file(str(path))
    assert spec.letter == "L" and spec.train_csv == "lab_train.csv" and spec.replay_csv == "replay_lab.csv"
    assert spec.transform == "nyu" and spec.source == "generic_png" and spec.eval_crop == "none"
    assert spec.encoding("test") == {"kind": "png", "scale": 0.001, "bits": 16}


@pytest.mark.parametrize("content, field", [
    ({"name": "lab", "letter": "L", "trasnform": "nyu"}, "trasnform"),
    ({"name": "lab", "letter": "L", "transform": "foo"}, "transform"),
    ({"name": "lab", "letter": "L", "depth_encoding": {"kind": "png", "scale": -1}}, "scale"),
    ({"letter": "L"}, "name"),
])
def test_json_errors_name_file_and_field(tmp_path, content, field, clean_registry):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError) as e:
        dom.load_domain_file(str(path))
    assert str(path) in str(e.value) and field in str(e.value)


def test_json_invalid_and_missing(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{name: ")
    with pytest.raises(ValueError, match="broken.json"):
        dom.load_domain_file(str(path))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        dom.load_domain_file(str(tmp_path / "nope.json"))


def test_domains_from_root(tmp_path, clean_registry):
    assert dom.load_domains_from_root(str(tmp_path)) == []
    (tmp_path / "domains.json").write_text(json.dumps([{"name": "lab", "letter": "L"},
                                                       {"name": "car", "letter": "C", "transform": "kitti",
                                                        "input_size": [64, 96], "max_depth": 50}]))
    specs = dom.load_domains_from_root(str(tmp_path))
    assert [s.letter for s in specs] == ["L", "C"]
    assert dom.load_domains_from_root(str(tmp_path)) == specs   # reloading is harmless
    assert [s.letter for s in parse_order("NLC")] == ["N", "L", "C"]
    (tmp_path / "domains.json").write_text(json.dumps([{"name": "lab2", "letter": "N"}]))
    with pytest.raises(ValueError, match="domains.json"):
        dom.load_domains_from_root(str(tmp_path))


@pytest.mark.parametrize("field,value", [("rgb_to_depth_size", "no"), ("alt_roots", "kitti"),
                                         ("depth_encoding", {"kind": "png", "scale": float("inf")}),
                                         ("max_depth", float("inf"))])
def test_domain_fields_of_the_wrong_type(field, value):
    from base.domains import domain_from_dict
    with pytest.raises(ValueError, match=field.split("_encoding")[0]):
        domain_from_dict({"name": "office", "letter": "X", field: value})


# ---- a model that learned a custom domain is usable by every tool ---------------------
OFFICE = {"name": "office", "letter": "O", "max_depth": 6.0, "input_size": [160, 224],
          "description": "my office"}


def office_checkpoint(tmp_path):
    """A checkpoint of N then a custom domain, saved while the domain was registered (as the engine
    does after reading domains.json), then the domain removed: a new process knows only the file."""
    spec = dom.register_domain(dom.domain_from_dict(OFFICE))
    path = tmp_path / "NO.pth.tar"
    try:
        make_checkpoint(path, "NO", scale=0.25, prototypes={"pooled": torch.randn(2, 128)})
    finally:
        dom.unregister_domain(spec)
    return path


def test_custom_domain_travels_with_the_checkpoint(tmp_path, clean_registry, capsys):
    from cli import demo
    path = office_checkpoint(tmp_path)
    img = tmp_path / "a.png"
    Image.new("RGB", (32, 24), (90, 80, 70)).save(img)
    out = tmp_path / "out"
    args = predict_args(path, img, out)
    args[args.index("--domain") + 1] = "office"
    assert predict.main(args) == 0
    done = json.loads((out / "predictions.json").read_text())["images"][0]
    assert done["domain"] == "office" and done["depth_max"] <= 6.0
    spec = dom.get_domain("O")
    assert spec.description == "my office" and spec.input_size == (160, 224)
    dom.unregister_domain(spec)
    model = demo.Models(demo.build_parser().parse_args(["--checkpoint", str(path), "--device", "cpu"])).get(str(path))
    assert demo.head_choices(model)[-1] == "office (O)"


def test_domain_descriptions_tolerate_old_and_new_fields(tmp_path, clean_registry):
    from models import checkpoint
    meta = {"domain_specs": [dom.NYU.to_dict(), {"name": "lab", "letter": "L", "a_future_field": 1}]}
    specs = checkpoint.register_domains(meta, tmp_path / "x.pth.tar")
    assert [s.name for s in specs] == ["lab"] and dom.get_domain("L").input_size == (228, 304)
    # the user's domains.json, registered later with other values, replaces the file's description
    edited = dom.domain_from_dict({"name": "lab", "letter": "L", "max_depth": 3.0})
    assert dom.register_domain(edited) is edited and dom.get_domain("lab").max_depth == 3.0
