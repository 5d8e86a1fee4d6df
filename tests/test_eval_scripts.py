"""test.py and test_inference.py: metric tables against a direct computation, the lifelong matrix
maths, head selection without the domain prior, and the error paths."""
import json
import subprocess
import sys

import pytest
import torch

from cli import test as test_cli
from evaluation import evaluate
from cli import test_inference as test_inference_cli
from cli import options
from cli import predict
from cli import quickstart
from helpers import (ROOT, direct_errors, make_checkpoint, make_data_root, make_net,
                     make_stage_checkpoints, save_authors_checkpoint)
from loaders import get_dataset
from metrics import METRIC_NAMES

SCALE = 0.25


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_data_root(tmp_path_factory.mktemp("data"), n_train=4, n_test=3, n_replay=3)


@pytest.fixture(scope="module")
def ckpt(data_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "NKS.pth.tar"
    net = make_checkpoint(path, "NKS", scale=SCALE, prototypes="replay", data_root=data_root)
    return path, net


def _args(path, data_root, *extra):
    return ["--checkpoint", str(path), "--data-root", str(data_root), "--quiet", *extra]


def _error(excinfo):
    return str(excinfo.value.code)


# ------------------------------------------------------------------------------- test.py tables
@pytest.mark.parametrize("crop,cap,aggregate", [("none", False, "image"), ("default", True, "image"),
                                                ("none", False, "pixel")])
def test_table_equals_direct_computation(ckpt, data_root, tmp_path, capsys, crop, cap, aggregate):
    path, net = ckpt
    out_json = tmp_path / "r.json"
    out = test_cli.main(_args(path, data_root, "--crop", crop, "--cap" if cap else "--no-cap",
                              "--aggregate", aggregate, "--batch-size", "2", "--json", str(out_json), "--no-fast"))
    printed = capsys.readouterr().out
    saved = json.loads(out_json.read_text())
    assert out["letters"] == "NKS" and out["scale"] == SCALE  # scale from the checkpoint's options
    for head, c in enumerate("NKS"):
        direct, per_image = direct_errors(net, c, head, data_root, SCALE, crop=crop, cap=cap,
                                          aggregate=aggregate)
        got = out["results"][c]
        assert got["count"] == direct["count"] == len(per_image) == 3
        assert got["head"] == head
        for k in METRIC_NAMES:
            assert got[k] == pytest.approx(direct[k], rel=1e-4, abs=1e-6), (c, k)
            assert saved["results"][c][k] == pytest.approx(direct[k], rel=1e-4, abs=1e-5), (c, k)
    # the printed table is metrics.format_table of the same numbers
    assert out["table"] in printed
    header = out["table"].splitlines()[0].split()
    assert header == ["domain", "images", "AbsRel", "SqRel", "RMSE", "RMSElog", "log10", "MAE", "d1", "d2", "d3"]
    assert saved["settings"] == {"crop": crop, "cap": cap, "aggregate": aggregate,  # + ours' rules
                                 "rmse": "pooled", "pred_clamp": True, "delta": "lt"}


def test_default_json_path_domain_subset_and_authors_order(ckpt, data_root, tmp_path):
    path, net = ckpt
    copy = tmp_path / "NKS.pth.tar"
    copy.write_bytes(path.read_bytes())
    out = test_cli.main(_args(copy, data_root, "--domains", "KS", "--max-images", "2", "--authors-eval"))
    assert list(out["results"]) == ["K", "S"] and out["results"]["K"]["head"] == 1
    assert out["results"]["S"]["count"] == 2
    assert out["settings"] == {"crop": "none", "cap": False, "aggregate": "pixel",  # the authors' rules
                               "rmse": "weighted", "pred_clamp": False, "delta": "le"}
    assert (tmp_path / "NKS.pth.tar.test.json").is_file()
    # the same weights as an authors' state_dict-only file, heads named by --order: same numbers
    authors = save_authors_checkpoint(tmp_path / "authors" / "NKS.pth.tar", net, module_prefix=True)
    out2 = test_cli.main(_args(authors, data_root, "--order", "NKS", "--scale", str(SCALE), "--domains", "KS",
                               "--max-images", "2", "--authors-eval", "--json", str(tmp_path / "a.json")))
    for c in "KS":
        for k in METRIC_NAMES:
            assert out2["results"][c][k] == pytest.approx(out["results"][c][k], rel=1e-6, abs=1e-9)


# ------------------------------------------------------------------------------- lifelong maths
def test_lifelong_summary_by_hand():
    rmse = [[1.0], [1.2, 3.0], [1.1, 3.5, 2.0]]
    s = evaluate.lifelong_summary(rmse, metric="rmse")
    assert not s["higher_is_better"]
    assert s["final"] == [1.1, 3.5, 2.0]
    assert s["final_average"] == pytest.approx(6.6 / 3)
    assert s["stage_average"] == pytest.approx([1.0, 2.1, 2.2])
    assert s["just_learned"] == [1.0, 3.0, 2.0]
    # forgetting (errors): final - best (lowest) earlier value; positive = forgot
    assert s["forgetting"] == pytest.approx([1.1 - 1.0, 3.5 - 3.0])
    assert s["average_forgetting"] == pytest.approx(0.3)
    # BWT (errors): error just after learning - final error; positive = improved
    assert s["bwt_per_domain"] == pytest.approx([1.0 - 1.1, 3.0 - 3.5])
    assert s["bwt"] == pytest.approx(-0.3)

    d1 = [[0.8], [0.7, 0.6], [0.75, 0.5, 0.9]]
    a = evaluate.lifelong_summary(d1, metric="delta1")  # accuracies: signs flipped
    assert a["higher_is_better"]
    assert a["forgetting"] == pytest.approx([0.8 - 0.75, 0.6 - 0.5])
    assert a["bwt_per_domain"] == pytest.approx([0.75 - 0.8, 0.5 - 0.6])
    assert a["bwt"] == pytest.approx(-0.075)
    # an old domain that improved: negative forgetting, positive BWT
    b = evaluate.lifelong_summary([[2.0], [1.5, 1.0]], higher_is_better=False)
    assert b["forgetting"] == pytest.approx([-0.5]) and b["bwt"] == pytest.approx(0.5)
    # one stage: nothing to forget
    one = evaluate.lifelong_summary([[0.3]], metric="abs_rel")
    assert one["forgetting"] == [] and one["bwt"] is None and one["average_forgetting"] is None
    with pytest.raises(ValueError):
        evaluate.lifelong_summary([[1.0], [None, 2.0]])
    with pytest.raises(ValueError):
        evaluate.lifelong_summary([])
    text = evaluate.format_matrix(["nyu (N)", "kitti (K)", "scannet (S)"], ["N", "NK", "NKS"], rmse, s, "rmse")
    assert "+0.1000" in text and "+0.5000" in text and "BWT -0.3000" in text


def assert_nested_approx(got, want, path="summary"):
    """``got == pytest.approx(want)`` leaf by leaf: pytest >= 9.2 refuses nested structures."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), path
        for k in want:
            assert_nested_approx(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_nested_approx(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want), path
    else:
        assert got == want, path


def test_matrix_over_stage_checkpoints(data_root, tmp_path, capsys):
    runs = tmp_path / "runs"
    paths = make_stage_checkpoints(runs, "NKS", scale=SCALE, strategy="finetune")
    assert [p.name for p in paths] == ["N.pth.tar", "NK_finetune.pth.tar", "NKS_finetune.pth.tar"]
    out = test_cli.main(["--matrix", "--strategy", "finetune", "--checkpoint", str(paths[-1]), "--data-root",
                         str(data_root), "--max-images", "2", "--metric", "rmse,delta1", "--quiet",
                         "--json", str(tmp_path / "m.json")])
    printed = capsys.readouterr().out
    assert out["order"] == "NKS" and out["stage_labels"] == ["N", "NK", "NKS"]
    for m in ("rmse", "delta1", "abs_rel"):
        matrix = out["matrix"][m]
        assert [len(r) for r in matrix] == [1, 2, 3]
        for s, stage in enumerate(out["stage_results"]):
            for d in range(s + 1):
                assert matrix[s][d] == stage["results"]["NKS"[d]][m]
        assert_nested_approx(out["summary"][m], evaluate.lifelong_summary(matrix, metric=m))
    assert out["tables"]["rmse"] in printed and out["tables"]["delta1"] in printed
    assert "forgetting" in printed and "BWT" in printed
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["summary"]["rmse"]["bwt"] == pytest.approx(out["summary"]["rmse"]["bwt"], abs=1e-5)
    # a stage that is missing is named
    paths[1].unlink()
    with pytest.raises(SystemExit) as e:
        test_cli.main(["--matrix", "--strategy", "finetune", "--order", "NKS", "--runs-dir", str(runs),
                       "--data-root", str(data_root), "--quiet"])
    assert "NK_finetune.pth.tar" in _error(e)


# ------------------------------------------------------------------------------- error paths
def test_errors_missing_checkpoint_authors_without_order_unknown_domain(ckpt, data_root, tmp_path):
    path, net = ckpt
    with pytest.raises(SystemExit) as e:
        test_cli.main(_args(tmp_path / "nope.pth.tar", data_root))
    assert "nope.pth.tar" in _error(e) and "not found" in _error(e)
    authors = save_authors_checkpoint(tmp_path / "NK.pth.tar", make_net(2))
    with pytest.raises(SystemExit) as e:
        test_cli.main(_args(authors, data_root))
    assert "--order" in _error(e) and "NK" in _error(e)
    with pytest.raises(SystemExit) as e:
        test_cli.main(_args(path, data_root, "--domains", "X"))
    assert "unknown domain 'X'" in _error(e)
    with pytest.raises(SystemExit) as e:
        test_cli.main(_args(authors, data_root, "--order", "NK", "--domains", "S"))
    assert "S not learned" in _error(e)
    with pytest.raises(SystemExit) as e:  # order length does not fit the heads
        test_cli.main(_args(authors, data_root, "--order", "NKS"))
    assert "2 head(s)" in _error(e)
    with pytest.raises(SystemExit) as e:
        test_cli.main(_args(path, tmp_path / "no_data"))
    assert "no_data" in _error(e)
    with pytest.raises(SystemExit) as e:
        test_cli.main(_args(path, data_root, "--matrix", "--metric", "bogus"))
    assert "bogus" in _error(e)
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as e:
            test_cli.main(_args(path, data_root, "--device", "cuda"))
        assert "CUDA is not available" in _error(e)
    # test_inference: an authors' file has no prototypes
    with pytest.raises(SystemExit) as e:
        test_inference_cli.main(_args(authors, data_root, "--order", "NK", "--scale", str(SCALE)))
    assert "--replay-root" in _error(e)


def test_cli_exit_status_and_message(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "test.py"), "--checkpoint", str(tmp_path / "missing.pth.tar")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 1
    assert "error:" in r.stderr and "missing.pth.tar" in r.stderr and "not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_help_texts_explain_every_option():
    for name, module in (("test", test_cli), ("test_inference", test_inference_cli), ("predict", predict),
                         ("quickstart", quickstart)):
        parser = module.build_parser()
        text = parser.format_help()
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name}: {action.option_strings} has no help"
        assert "--device" in text or name == "quickstart"


# ------------------------------------------------------------------------------- fast-path options
def test_runtime_options_pass_known_keys_and_refuse_unknown_ones():
    from base.errors import InputError

    class Args:
        no_fast, precision, backend, predictor_option = True, "auto", "auto", ["channels_last=false"]

    runtime = options.runtime_options(Args)
    assert runtime.keywords() == {"fast": False, "channels_last": False}
    Args.predictor_option = ["channels_last=false", "nope=1"]
    with pytest.raises(InputError, match="no option nope; its options are fast, precision"):
        options.runtime_options(Args).keywords()  # a library error, not SystemExit
    Args.no_fast, Args.precision, Args.predictor_option = False, "bf16", []
    assert options.runtime_options(Args).keywords() == {"precision": "bf16"}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        Args.predictor_option = ["novalue"]
        options.runtime_options(Args)


# ------------------------------------------------------------------------------- without the prior
@pytest.fixture(scope="module")
def constant_root(tmp_path_factory):
    return make_data_root(tmp_path_factory.mktemp("const"), n_train=3, n_test=3, n_replay=3, style="constant")


@pytest.mark.parametrize("selector", ["pooled", "map"])
def test_selection_is_perfect_on_clearly_separated_domains(constant_root, tmp_path, capsys, selector):
    # Flat red / green / blue images per domain: prototypes from the replay rows, computed with an
    # untrained network, must send every test image to its own domain's head.
    authors = save_authors_checkpoint(tmp_path / "NKS.pth.tar", make_net(3, seed=1))
    out = test_inference_cli.main(_args(authors, constant_root, "--order", "NKS", "--scale", str(SCALE),
                                        "--replay-root", str(constant_root), "--selector", selector,
                                        "--latency-runs", "2", "--warmup", "1", "--batch-size", "2",
                                        "--json", str(tmp_path / "i.json")))
    printed = capsys.readouterr().out
    sel = out["selection"]
    assert sel["accuracy"] == {"N": 1.0, "K": 1.0, "S": 1.0} and sel["overall_accuracy"] == 1.0
    assert sel["confusion"] == {"N": [3, 0, 0], "K": [0, 3, 0], "S": [0, 0, 3]}
    for c in "NKS":  # right heads chosen: the same numbers as with the domain prior
        for k in METRIC_NAMES:
            assert out["selected"][c][k] == pytest.approx(out["prior"][c][k], rel=1e-6)
        lat = out["latency"][c]
        assert lat["runs"] == 2 and lat["median_ms"] > 0 and lat["fps"] == pytest.approx(1000 / lat["median_ms"])
    assert out["tables"]["confusion"] in printed and "frames/s" in printed
    assert json.loads((tmp_path / "i.json").read_text())["selection"]["overall_accuracy"] == 1.0


def test_selection_with_stored_prototypes_matches_direct_selection(ckpt, data_root, tmp_path):
    path, net = ckpt
    out = test_inference_cli.main(_args(path, data_root, "--latency-runs", "0", "--json", str(tmp_path / "i.json")))
    assert out["prototypes_from"] == "checkpoint" and out["latency"] == {}
    conf = out["selection"]["confusion"]
    # the confusion matrix equals nearest-prototype selection computed here from the stored
    # prototypes and the fp32 network's fused features of the same test images
    from models import load_checkpoint
    from inference.prototypes import select_domain
    ref_net = load_checkpoint(path)
    protos = ref_net.meta["prototypes"]
    for c in "NKS":
        images = torch.stack([item["image"] for item in get_dataset(c, "test", str(data_root), train=False,
                                                                     scale=SCALE)])
        with torch.no_grad():
            chosen = select_domain(ref_net.features(images), protos, "pooled")
        assert conf[c] == [int((chosen == h).sum()) for h in range(3)]
        assert out["selection"]["accuracy"][c] == pytest.approx(float((chosen == "NKS".index(c)).float().mean()))
    # the prior table equals test.py's
    ref = test_cli.main(_args(path, data_root, "--json", str(tmp_path / "t.json")))
    for c in "NKS":
        for k in METRIC_NAMES:
            assert out["prior"][c][k] == pytest.approx(ref["results"][c][k], rel=1e-6)


def test_measure_latency_resizes_and_counts():
    from evaluation.selection import measure_latency
    net = make_net(2)
    from inference.predictor import DepthPredictor
    protos = {"pooled": torch.randn(2, 128), "map": [torch.randn(64, 8, 8), torch.randn(64, 8, 8)]}
    pred = DepthPredictor(net, protos)
    images = [torch.randn(3, 32, 48) for _ in range(2)]
    r = measure_latency(pred, images, warmup=1, runs=3, size=(40, 56))
    assert r["size"] == [40, 56] and r["runs"] == 3 and r["min_ms"] <= r["median_ms"] <= r["p90_ms"]
    assert options.parse_size("228x304") == (228, 304)
    with pytest.raises(SystemExit):
        options.parse_size("228")
