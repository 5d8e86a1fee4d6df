"""The evaluation library below the command lines (issue 25): settings dataclasses, a loaded
predictor or network passed in, ordinary exceptions, one checkpoint load per test_inference.py run."""
import pytest

from cli import test as test_cli
from cli import test_inference as test_inference_cli
from base.errors import InputError
from evaluation.evaluate import EvalOptions, evaluate_checkpoint
from evaluation.selection import SelectionOptions, evaluate_selection
from helpers import make_checkpoint, make_data_root, make_net, save_authors_checkpoint
from inference.predictor import RuntimeOptions, build_predictor
from metrics import METRIC_NAMES
from models import CheckpointError, load_checkpoint

SCALE = 0.25

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_data_root(tmp_path_factory.mktemp("data"), n_train=4, n_test=3, n_replay=3)


@pytest.fixture(scope="module")
def ckpt(data_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "NKS.pth.tar"
    make_checkpoint(path, "NKS", scale=SCALE, prototypes="replay", data_root=data_root)
    return path


def _argv(path, data_root, *extra):
    return ["--checkpoint", str(path), "--data-root", str(data_root), "--quiet", *extra]


def test_evaluate_checkpoint_with_settings_and_a_loaded_predictor(ckpt, data_root, tmp_path):
    options = EvalOptions(data_root=str(data_root), quiet=True)  # no argparse anywhere
    predictor = build_predictor(ckpt, RuntimeOptions(fast=False))
    out = evaluate_checkpoint(predictor, options, "cpu", domains="NK")
    assert out["checkpoint"] == str(ckpt) and list(out["results"]) == ["N", "K"]
    assert out["scale"] == SCALE and out["settings"]["crop"] == "default"  # the protocol's, filled in
    cli = test_cli.main(_argv(ckpt, data_root, "--no-fast", "--domains", "NK", "--json", str(tmp_path / "t.json")))
    for c in "NK":
        for k in METRIC_NAMES:
            assert out["results"][c][k] == pytest.approx(cli["results"][c][k], rel=1e-6)


def test_selection_evaluation_called_directly(ckpt, data_root, tmp_path):
    net = load_checkpoint(ckpt)
    out = evaluate_selection(net, EvalOptions(data_root=str(data_root), quiet=True),
                             SelectionOptions(latency_runs=1, warmup=0), "cpu", RuntimeOptions(fast=False))
    cli = test_inference_cli.main(_argv(ckpt, data_root, "--no-fast", "--latency-runs", "1", "--warmup", "0",
                                        "--json", str(tmp_path / "i.json")))
    assert out["selection"] == cli["selection"] and out["selector"] == cli["selector"]
    assert set(out["latency"]) == set(cli["latency"])
    for c in "NKS":
        for k in METRIC_NAMES:
            assert out["selected"][c][k] == pytest.approx(cli["selected"][c][k], rel=1e-6)


def test_library_errors_are_input_errors_not_system_exit(ckpt, data_root, tmp_path):
    options = EvalOptions(data_root=str(data_root), quiet=True)
    with pytest.raises(CheckpointError, match="not found"):
        evaluate_checkpoint(tmp_path / "nope.pth.tar", options, "cpu")
    authors = save_authors_checkpoint(tmp_path / "NK.pth.tar", make_net(2))
    with pytest.raises(CheckpointError, match="--order"):
        evaluate_checkpoint(authors, options, "cpu")
    with pytest.raises(InputError, match="S not learned"):
        evaluate_checkpoint(authors, options, "cpu", order="NK", domains="S")
    with pytest.raises(InputError, match="--batch-size must be at least 1"):
        evaluate_checkpoint(ckpt, EvalOptions(batch_size=0), "cpu")
    with pytest.raises(InputError, match="no_data"):
        evaluate_checkpoint(ckpt, EvalOptions(data_root=str(tmp_path / "no_data")), "cpu")
    with pytest.raises(InputError, match="stores no domain prototypes"):
        evaluate_selection(authors, EvalOptions(data_root=str(data_root), scale=SCALE), SelectionOptions(),
                           "cpu", order="NK")
    with pytest.raises(InputError, match="--latency-runs"):
        evaluate_selection(ckpt, options, SelectionOptions(latency_runs=-1), "cpu")
    with pytest.raises(InputError, match="no option nope"):
        build_predictor(ckpt, RuntimeOptions(extra={"nope": 1}))
    # the command turns the same error into one error line
    with pytest.raises(SystemExit, match="error: DepthPredictor has no option nope"):
        test_cli.main(_argv(ckpt, data_root, "--predictor-option", "nope=1"))


def test_one_checkpoint_load_per_test_inference_run(ckpt, data_root, tmp_path, monkeypatch):
    """Before issue 25 a run loaded the file 2-5 times (plain net, replay/authors'/lda prototypes,
    predictor); now once, the network passed on. Counted where every load reads the file."""
    import models.checkpoint as checkpoint
    reads = []
    real = checkpoint.read_checkpoint

    def counting(*a, **kw):
        reads.append(a[0])
        return real(*a, **kw)

    monkeypatch.setattr(checkpoint, "read_checkpoint", counting)
    argv = _argv(ckpt, data_root, "--latency-runs", "0", "--json", str(tmp_path / "i.json"))
    test_inference_cli.main(argv)
    assert len(reads) == 1
    reads.clear()  # with every prototype computed from replay rows (replay, authors', lda): still one
    test_inference_cli.main(argv + ["--replay-root", str(data_root), "--selector", "authors"])
    test_inference_cli.main(argv + ["--replay-root", str(data_root), "--selector", "lda"])
    assert len(reads) == 2
