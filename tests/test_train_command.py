"""The training command (cli/train.py, the train_*.py scripts) as a user meets it: no code run from a
resume file, nothing overwritten that the run did not make, a stage stopped anywhere (Ctrl-C, SIGINT,
SIGTERM, an unreadable sample, a non-finite loss) saves its state and resumes to the uninterrupted
run's weights, non-finite weights and data without ground truth refused, option values that cannot
work refused, every error one line.

Tiny data (make_data_root, quarter-size frames), resnet18 at --scale 0.25, a few steps per run.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from base import safeio
from cli import test as test_cli
from cli import train as train_cli
from engine import sampling
from engine import stage as engine_stage
from helpers import ROOT, assert_one_error_line, make_checkpoint, make_data_root, make_net
from models import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """N and K at quarter size, 8 training images each (2 steps of 4 per epoch)."""
    return make_data_root(tmp_path_factory.mktemp("train_data"), letters="NK", n_train=8, n_test=2,
                          n_replay=4)


def options(root, runs, *extra):
    return ["--data-root", str(root), "--runs-dir", str(runs), "--scale", "0.25", "--batch-size", "4",
            "--workers", "0", "--val-images", "0", "--proto-images", "4", "--encoder", "resnet18",
            "--quiet", *extra]


def run_error(order, argv) -> str:
    """The SystemExit message of a failing train_cli.main run (any other exception fails the test)."""
    with pytest.raises(SystemExit) as stop:
        train_cli.main(order, "", argv)
    assert isinstance(stop.value.code, str), stop.value.code
    return stop.value.code


# ---- no code from a resume file -------------------------------------------------------------------
class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this object creates the marker file
        return (open, (self.marker, "w"))


def test_crafted_resume_file_runs_no_code(root, tmp_path):
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "runs" / "N"
    run_dir.mkdir(parents=True)
    torch.save({"meta": Payload(str(marker)), "state_dict": {}}, run_dir / "last.pth.tar")
    msg = run_error("N", options(root, tmp_path / "runs", "--resume", "--max-steps", "1"))
    assert not marker.exists()
    assert_one_error_line(msg, "last.pth.tar")


# ---- nothing overwritten that this run did not make ---------------------------------------------
@pytest.mark.parametrize("flag", [["--epochs", "0"], ["--epochs", "-1"], ["--max-steps", "0"]])
def test_no_step_count_that_trains_nothing(root, tmp_path, flag):
    out = tmp_path / "N.pth.tar"
    make_checkpoint(out, "N")
    before = out.read_bytes()
    msg = run_error("N", options(root, tmp_path, *flag))
    assert_one_error_line(msg, flag[0])
    assert out.read_bytes() == before


def test_out_equal_to_prior_is_refused(root, tmp_path):
    prior = tmp_path / "N.pth.tar"
    make_checkpoint(prior, "N")
    before = prior.read_bytes()
    msg = run_error("NK", options(root, tmp_path, "--max-steps", "1", "--prior", str(prior),
                                  "--out", str(prior)))
    assert_one_error_line(msg, "prior")
    assert prior.read_bytes() == before


def test_earlier_run_is_kept_without_overwrite(root, tmp_path):
    """A fresh start into a run folder with an earlier run's state, or over an existing model,
    stops before touching them; --overwrite starts over (and cleans killed saves' temp files)."""
    run_dir = tmp_path / "N"
    run_dir.mkdir()
    (run_dir / "log.jsonl").write_text('{"epoch": 1}\n')
    (run_dir / "last.pth.tar").write_bytes(b"earlier state")
    msg = run_error("N", options(root, tmp_path, "--max-steps", "1"))
    assert_one_error_line(msg, "--resume", "--overwrite")
    assert (run_dir / "log.jsonl").read_text() == '{"epoch": 1}\n'
    assert (run_dir / "last.pth.tar").read_bytes() == b"earlier state"

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    litter = [run_dir / f".last.pth.tar.{safeio._HOST}-{dead}.x1y2z3w4.tmp", run_dir / ".last.pth.tar.abcd1234.tmp"]
    live = run_dir / f".last.pth.tar.{safeio._HOST}-{os.getpid()}.q9q9q9q9.tmp"  # a save in progress
    for p in (*litter, live):
        p.write_bytes(b"partial")
    old = os.path.getmtime(litter[1]) - 2 * safeio.LEGACY_AGE_S
    os.utime(litter[1], (old, old))
    out = train_cli.main("N", "", options(root, tmp_path, "--max-steps", "1", "--overwrite"))
    assert not any(p.exists() for p in litter) and live.exists()
    state = torch.load(run_dir / "last.pth.tar", weights_only=True)
    assert state["global_step"] == 1
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["global_step"] for r in log] == [1]

    msg = run_error("N", options(root, tmp_path, "--max-steps", "1"))  # the new model is kept too
    assert_one_error_line(msg, out, "--overwrite")


def test_out_without_suffix_fails_before_training(root, tmp_path):
    msg = run_error("N", options(root, tmp_path, "--max-steps", "1", "--out", str(tmp_path / "r" / "N")))
    assert_one_error_line(msg, "--out", ".pth.tar")
    assert not (tmp_path / "r").exists()


# ---- resume equals the uninterrupted run -----------------------------------------------------------
def tensors_of(path):
    state, meta = read_checkpoint(path)
    protos = meta["prototypes"]
    return state, {k: v for k, v in protos.items() if torch.is_tensor(v)}


def assert_identical(a, b):
    (sa, pa), (sb, pb) = tensors_of(a), tensors_of(b)
    assert sa.keys() == sb.keys() and pa.keys() == pb.keys() and pa
    for d1, d2 in ((sa, sb), (pa, pb)):
        for key in d1:
            assert torch.equal(d1[key], d2[key]), key


@pytest.fixture(scope="module")
def uninterrupted(root, tmp_path_factory):
    runs = tmp_path_factory.mktemp("full")
    return train_cli.main("N", "", options(root, runs, "--epochs", "2"))


def interrupt_in_forward(monkeypatch, call, action):
    """Run ``action`` inside the loss of the ``call``-th micro-batch (1-based): after the forward
    pass of the network, so BatchNorm statistics are already updated."""
    original = engine_stage.uncertainty_depth_loss
    calls = {"n": 0}

    def loss(*args):
        calls["n"] += 1
        if calls["n"] == call:
            action()
        return original(*args)

    monkeypatch.setattr(engine_stage, "uncertainty_depth_loss", loss)
    return lambda: monkeypatch.setattr(engine_stage, "uncertainty_depth_loss", original)


def raise_interrupt():
    raise KeyboardInterrupt


def send_sigint(times):
    def action():
        for _ in range(times):
            os.kill(os.getpid(), signal.SIGINT)
    return action


@pytest.mark.parametrize("call,action,steps_saved", [
    (2, raise_interrupt, 1),     # Ctrl-C inside the forward pass of the first epoch's last step
    (3, send_sigint(1), 3),      # a real SIGINT mid-step: the step completes, then the run stops
    (4, send_sigint(2), 3),      # SIGINT twice: stop at once, the step is rolled back
])
def test_resume_after_an_interrupt_anywhere_is_exact(root, tmp_path, monkeypatch, uninterrupted,
                                                     call, action, steps_saved):
    restore = interrupt_in_forward(monkeypatch, call, action)
    # what the process had before: Python's default_int_handler, or SIG_IGN when started in the
    # background of a non-interactive shell (`cmd &`, nohup)
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as stop:
        train_cli.main("N", "", options(root, tmp_path, "--epochs", "2"))
    assert stop.value.code == 130
    assert signal.getsignal(signal.SIGINT) is handler_before  # the stage's handler is undone
    state = torch.load(tmp_path / "N" / "last.pth.tar", weights_only=True)
    assert state["global_step"] == steps_saved and state["interrupted"]
    restore()
    resumed = train_cli.main("N", "", options(root, tmp_path, "--epochs", "2", "--resume"))
    assert_identical(uninterrupted, resumed)


def test_interrupt_while_computing_prototypes_resumes_to_them(root, tmp_path, monkeypatch, uninterrupted):
    original = engine_stage.compute_prototypes
    monkeypatch.setattr(engine_stage, "compute_prototypes", lambda *a, **k: raise_interrupt())
    with pytest.raises(SystemExit) as stop:
        train_cli.main("N", "", options(root, tmp_path, "--epochs", "2"))
    assert stop.value.code == 130
    monkeypatch.setattr(engine_stage, "compute_prototypes", original)
    assert_identical(uninterrupted, train_cli.main("N", "", options(root, tmp_path, "--epochs", "2",
                                                                   "--resume")))


# ---- SIGTERM and an unreadable sample mid-epoch ----------------------------------------------------
def test_sigterm_saves_the_state_like_ctrl_c(root, tmp_path):
    cmd = [sys.executable, "train_N.py", *options(root, tmp_path, "--epochs", "1000")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"))
    try:
        for line in proc.stdout:  # the description line comes just before the training loop
            if line.startswith("stage N"):
                break
        log = tmp_path / "N" / "log.jsonl"
        while not log.exists() and proc.poll() is None:  # one epoch done: surely in the loop
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    state = torch.load(tmp_path / "N" / "last.pth.tar", weights_only=True)
    assert state["interrupted"] and state["global_step"] >= 2
    assert "Traceback" not in err


def test_unreadable_sample_mid_epoch_saves_the_state(tmp_path):
    data = make_data_root(tmp_path / "data", letters="N", n_train=36, n_test=1, n_replay=4)
    # the first 32 rows are read before training (median depth); break a later one in step >= 2
    order = list(sampling.StepSampler(list(range(36)), batch_size=4, seed=0))
    position = next(p for p, i in enumerate(order) if i >= 32 and p >= 4)
    rows = (data / "nyu2_train.csv").read_text().splitlines()
    bad = data / rows[order[position]].split(",")[0]
    bad.write_bytes(b"not a jpeg")
    msg = run_error("N", options(data, tmp_path / "runs", "--epochs", "1"))
    assert_one_error_line(msg, str(bad.name), "--resume")
    state = torch.load(tmp_path / "runs" / "N" / "last.pth.tar", weights_only=True)
    assert state["global_step"] == position // 4 and state["interrupted"]


# ---- non-finite loss, weights and ground truth -----------------------------------------------------
def nan_loss_at(monkeypatch, call):
    original = engine_stage.uncertainty_depth_loss
    calls = {"n": 0}

    def loss(*args):
        calls["n"] += 1
        value = original(*args)
        return value * float("nan") if calls["n"] == call else value

    monkeypatch.setattr(engine_stage, "uncertainty_depth_loss", loss)


def test_nan_loss_stops_naming_step_and_files(root, tmp_path, monkeypatch):
    nan_loss_at(monkeypatch, 2)
    msg = run_error("N", options(root, tmp_path, "--epochs", "2"))
    assert_one_error_line(msg, "non-finite", "step 2", "nyu2_train/", "--on-nonfinite skip")
    assert not (tmp_path / "N.pth.tar").exists()
    state = torch.load(tmp_path / "N" / "last.pth.tar", weights_only=True)
    assert state["global_step"] == 1
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_nan_loss_can_be_skipped(root, tmp_path, monkeypatch):
    nan_loss_at(monkeypatch, 2)
    out = train_cli.main("N", "", options(root, tmp_path, "--epochs", "2", "--on-nonfinite", "skip"))
    net = load_checkpoint(out)  # loads: every weight finite
    assert net.num_domains == 1
    assert torch.load(tmp_path / "N" / "last.pth.tar", weights_only=True)["skipped_steps"] == 1


def test_non_finite_weights_are_never_saved_or_evaluated(root, tmp_path):
    net = make_net(1)
    with torch.no_grad():
        net.heads[0].depth.conv2.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(tmp_path / "a.pth.tar", net, domains=["nyu"])
    assert not (tmp_path / "a.pth.tar").exists()
    # a file made elsewhere: refused by everything that loads a model
    torch.save({"state_dict": net.state_dict(), "format": "lifelong-monodepth", "version": 1,
                "domains": ["nyu"], "letters": "N", "encoder": "resnet18"}, tmp_path / "N.pth.tar")
    with pytest.raises(CheckpointError, match="non-finite"):
        load_checkpoint(tmp_path / "N.pth.tar")
    with pytest.raises(SystemExit) as stop:
        test_cli.main(["--checkpoint", str(tmp_path / "N.pth.tar"), "--data-root", str(root), "--quiet",
                       "--max-images", "1"])
    assert_one_error_line(str(stop.value.code), "non-finite")
    msg = run_error("NK", options(root, tmp_path, "--max-steps", "1"))  # as a prior
    assert_one_error_line(msg, "non-finite")


def test_data_without_ground_truth_is_refused(tmp_path):
    data = make_data_root(tmp_path / "data", letters="N", n_train=4, n_test=1, n_replay=4)
    for line in (data / "nyu2_train.csv").read_text().splitlines():
        depth = data / line.split(",")[1]
        Image.fromarray(np.zeros((120, 160), np.uint8)).save(depth)
    msg = run_error("N", options(data, tmp_path / "runs", "--max-steps", "1", "--init-depth-bias", "off"))
    assert_one_error_line(msg, "no ground truth", "nyu2_train.csv")
    assert not (tmp_path / "runs" / "N.pth.tar").exists()


# ---- option values and error lines ----------------------------------------------------------------
@pytest.mark.parametrize("order,flags,word", [
    ("N", ["--batch-size", "0"], "--batch-size"),
    ("N", ["--grad-accum", "0"], "--grad-accum"),
    ("N", ["--scale", "0"], "--scale"),
    ("N", ["--scale", "nan"], "--scale"),
    ("N", ["--val-images", "-3"], "--val-images"),
    ("N", ["--lr", "inf"], "--lr"),
    ("NK", ["--order", ""], "--order"),
    ("N", ["--scale", "5"], "rendered at scale 0.25"),
])
def test_useless_option_values_are_refused(root, tmp_path, order, flags, word):
    (root / "meta.json").write_text(json.dumps({"scale": 0.25}))  # as synthetic.py records it
    msg = run_error(order, options(root, tmp_path, "--max-steps", "1", *flags))
    assert_one_error_line(msg, word)


def test_order_by_names(root):
    args = train_cli.build_parser("NK", "").parse_args(options(root, "runs", "--order", "nyu,kitti"))
    from engine.options import resolve_options
    assert resolve_options(train_cli.stage_options(args, "NK")).order == "NK"


def test_script_errors_are_one_line(root, tmp_path):
    """domains.json and checkpoint errors from the training scripts: `error:`, no traceback."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "domains.json").write_text('[{"name": "office", "letter": "X", "colour": "red"}]')
    res = subprocess.run([sys.executable, "train_N.py", "--data-root", str(data), "--quiet"], cwd=ROOT,
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 1 and res.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in res.stderr and "colour" in res.stderr
    (tmp_path / "N.pth.tar").write_bytes(b"PK\x03\x04 truncated")
    msg = run_error("NK", options(root, tmp_path, "--max-steps", "1"))
    assert_one_error_line(msg, "N.pth.tar")


def test_escape_codes_are_shown_escaped(tmp_path):
    root = tmp_path / "data\x1b[31mred"
    root.mkdir()
    msg = run_error("N", options(root, tmp_path / "runs", "--max-steps", "1"))
    assert_one_error_line(msg, "\\x1b[31m")
    assert "\x1b" not in msg


def test_help_has_no_empty_or_repeated_defaults(capsys):
    with pytest.raises(SystemExit):
        train_cli.build_parser("NK", "").parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default NK) (default" not in text
    assert "--overwrite" in text and "--on-nonfinite" in text
