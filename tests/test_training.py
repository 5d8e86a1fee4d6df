"""The lifelong training engine (engine/, through cli/train.py) on tiny synthetic data at reduced size;
one training per run folder, training data errors that say what is wrong, a long legal --out."""
import json
from pathlib import Path

import pytest
import torch

from base import domains as dom
from engine import model as engine_model
from engine import stage as engine_stage
from engine import processes
from engine import sampling
from cli import train as train_cli
from helpers import error_of, make_data_root
from loaders import get_dataset
from models import load_checkpoint, read_checkpoint, save_checkpoint


def options(root, runs, *extra):
    return ["--data-root", str(root), "--runs-dir", str(runs), "--scale", "0.25", "--batch-size", "4",
            "--workers", "0", "--val-images", "2", "--proto-images", "4", "--encoder", "resnet18",
            "--quiet", *extra]


def n_images(root):
    ds = get_dataset("N", "test", str(root), scale=0.25)
    return torch.stack([ds[i]["image"] for i in range(len(ds))])


def head0_depth(path, images):
    net = load_checkpoint(path)
    with torch.no_grad():
        return net(images, domain=0, with_uncertainty=False)[0]


@pytest.fixture(scope="module")
def stage_runs(synthetic_root, tmp_path_factory):
    """N trained for a few epochs, then K learned with `ours` and with `finetune` (same seed, steps)."""
    runs = tmp_path_factory.mktemp("runs")
    first = train_cli.main("N", "", options(synthetic_root, runs, "--epochs", "6"))
    ours = train_cli.main("NK", "", options(synthetic_root, runs, "--epochs", "3"))
    finetune = train_cli.main("NK", "", options(synthetic_root, runs, "--epochs", "3",
                                               "--strategy", "finetune"))
    return runs, first, ours, finetune


def test_two_stages_write_one_and_two_heads(stage_runs):
    runs, first, ours, _ = stage_runs
    assert first == str(runs / "N.pth.tar") and ours == str(runs / "NK.pth.tar")
    net1, net2 = load_checkpoint(first), load_checkpoint(ours)
    assert (net1.num_domains, net2.num_domains) == (1, 2)
    assert net2.meta["letters"] == "NK" and net2.meta["domains"] == ["nyu", "kitti"]
    assert net2.meta["strategy"] == "ours"
    assert net2.meta["depth_ranges"] == [[1e-3, 10.0], [1e-3, 80.0]]
    protos = net2.meta["prototypes"]
    assert protos["pooled"].shape == (2, 128) and len(protos["map"]) == 2
    log = [json.loads(line) for line in (runs / "NK" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert set(log[-1]["val"]) == {"N", "K"} and {"new", "distill0", "replay0"} <= set(log[-1]["loss"])
    assert json.loads((runs / "NK" / "options.json").read_text())["order"] == "NK"


def test_ours_forgets_less_than_finetune(stage_runs, synthetic_root):
    """After learning K, head N's predictions on N images move less with distillation + replay."""
    _, first, ours, finetune = stage_runs
    images = n_images(synthetic_root)
    before = head0_depth(first, images)

    def drift(path):
        return ((head0_depth(path, images) - before).abs() / before.abs().clamp_min(1e-3)).mean().item()

    drift_ours, drift_finetune = drift(ours), drift(finetune)
    print(f"first-head drift: ours {drift_ours:.4f}, finetune {drift_finetune:.4f}")
    assert drift_ours < drift_finetune


def test_finetune_leaves_old_head_weights_untouched(stage_runs):
    _, first, _, finetune = stage_runs
    old, new = read_checkpoint(first)[0], read_checkpoint(finetune)[0]
    for key in (k for k in old if k.startswith("task0.") and "num_batches" not in k):
        assert torch.equal(old[key], new[key]), key
    assert not torch.equal(old["E.conv1.weight"], new["E.conv1.weight"])  # the trunk did move


def interrupt_at(monkeypatch, step):
    """Make the engine raise KeyboardInterrupt (Ctrl-C) when it is about to take ``step``."""
    original_step = engine_stage.Stage.train_step

    def interrupted(self, micro):
        if self.global_step == step:
            raise KeyboardInterrupt
        return original_step(self, micro)

    monkeypatch.setattr(engine_stage.Stage, "train_step", interrupted)
    return lambda: monkeypatch.setattr(engine_stage.Stage, "train_step", original_step)


def assert_same_weights(path_a, path_b):
    a, b = read_checkpoint(path_a)[0], read_checkpoint(path_b)[0]
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key


def test_resume_continues_where_it_stopped(synthetic_root, tmp_path, monkeypatch):
    """Ctrl-C at step 5 leaves a resumable state; resuming ends with the uninterrupted run's weights."""
    full = train_cli.main("N", "", options(synthetic_root, tmp_path / "a", "--epochs", "2"))
    restore = interrupt_at(monkeypatch, 5)
    with pytest.raises(SystemExit) as stop:
        train_cli.main("N", "", options(synthetic_root, tmp_path / "b", "--epochs", "2"))
    assert stop.value.code == 130
    state = torch.load(tmp_path / "b" / "N" / "last.pth.tar", weights_only=False)
    assert (state["global_step"], state["epoch"], state["step_in_epoch"]) == (5, 1, 2)
    assert state["interrupted"] and not (tmp_path / "b" / "N.pth.tar").exists()

    restore()
    resumed = train_cli.main("N", "", options(synthetic_root, tmp_path / "b", "--epochs", "2", "--resume"))
    assert_same_weights(full, resumed)
    log = [json.loads(line) for line in (tmp_path / "b" / "N" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["global_step"] == 6


def test_resume_of_a_later_stage_continues_the_replay_stream(stage_runs, synthetic_root, tmp_path, monkeypatch):
    """A resumed NK stage (teacher, distillation, a cycling replay buffer) ends with the weights of
    the uninterrupted run: the replay stream continues where it stopped, it does not restart."""
    import shutil
    _, first, _, _ = stage_runs
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        shutil.copy(first, tmp_path / d / "N.pth.tar")
    full = train_cli.main("NK", "", options(synthetic_root, tmp_path / "a", "--epochs", "2"))
    restore = interrupt_at(monkeypatch, 4)  # 3 steps per epoch, 2 per replay epoch: mid-replay-epoch
    with pytest.raises(SystemExit):
        train_cli.main("NK", "", options(synthetic_root, tmp_path / "b", "--epochs", "2"))
    restore()
    resumed = train_cli.main("NK", "", options(synthetic_root, tmp_path / "b", "--epochs", "2", "--resume"))
    assert_same_weights(full, resumed)
    log = [json.loads(line) for line in (tmp_path / "b" / "NK" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]  # the interrupted epoch is logged once, when finished


# ---- error paths -----------------------------------------------------------------------------------
def run_error(root, runs, script_order, *extra):
    with pytest.raises(SystemExit) as err:
        train_cli.main(script_order, "", options(root, runs, "--max-steps", "1", *extra))
    return str(err.value)


def test_missing_prior_names_the_command(synthetic_root, tmp_path):
    msg = run_error(synthetic_root, tmp_path, "NKS", "--order", "KNS")
    assert "KN.pth.tar not found" in msg and "train_NK.py --order KN" in msg


def test_repeated_and_unknown_letters(synthetic_root, tmp_path):
    assert "repeats" in run_error(synthetic_root, tmp_path, "NK", "--order", "NN")
    assert "'NQ'" in run_error(synthetic_root, tmp_path, "NK", "--order", "NQ")


def test_prior_that_does_not_match_the_order(stage_runs, synthetic_root, tmp_path):
    runs, first, _, _ = stage_runs
    msg = run_error(synthetic_root, tmp_path, "NKS", "--order", "KNS", "--prior", str(runs / "NK.pth.tar"))
    assert "needs the prior 'KN'" in msg


def test_authors_checkpoint_needs_the_order(stage_runs, synthetic_root, tmp_path):
    _, first, _, _ = stage_runs
    state, _ = read_checkpoint(first)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "N.pth.tar")
    msg = run_error(synthetic_root, tmp_path, "NK")
    assert "no metadata" in msg and "--order" in msg
    out = train_cli.main("NK", "", options(synthetic_root, tmp_path, "--max-steps", "1", "--order", "NK",
                                          "--val-images", "0"))
    assert load_checkpoint(out).meta["letters"] == "NK"


def test_fourth_custom_domain_on_top_of_three(synthetic_root, tmp_path):
    """A user's own domain (here a copy of the ScanNet files under another name) is one more stage."""
    (synthetic_root / "domains.json").write_text(json.dumps([{
        "name": "office", "letter": "X", "train_csv": "scannet_train.csv", "test_csv": "scannet_test.csv",
        "replay_csv": "replay_scannet.csv", "max_depth": 10.0, "source": "scannet", "transform": "scannet",
        "resize": [240, 320], "rgb_to_depth_size": True}]))
    try:
        runs = tmp_path
        for order in ("N", "NK", "NKS", "NKSX"):
            script = {1: "N", 2: "NK"}.get(len(order), "NKS")
            flag = "--domain" if len(order) == 1 else "--order"
            out = train_cli.main(script, "", options(synthetic_root, runs, "--max-steps", "1",
                                                    "--val-images", "0", flag, order))
        net = load_checkpoint(out)
        assert net.num_domains == 4 and net.meta["letters"] == "NKSX"
        assert net.meta["domains"][-1] == "office"
    finally:
        (synthetic_root / "domains.json").unlink()
        from base import domains
        domains.unregister_domain("X")


def test_joint_and_shared_head_baselines(synthetic_root, tmp_path):
    joint = load_checkpoint(train_cli.main("NK", "", options(synthetic_root, tmp_path, "--max-steps", "1",
                                                            "--strategy", "joint")))
    assert joint.num_domains == 2 and joint.meta["strategy"] == "joint"
    shared = train_cli.main("NK", "", options(synthetic_root, tmp_path, "--max-steps", "1",
                                             "--strategy", "joint", "--shared-head"))
    net = load_checkpoint(shared)
    assert net.num_domains == 1 and net.meta["trained_letters"] == "NK"


def test_step_sampler_emulates_processes():
    """One process with accum=2 sees, micro-batch for micro-batch, what two processes see."""
    data = list(range(40))
    one = list(sampling.StepSampler(data, batch_size=3, world=1, rank=0, accum=2, seed=1))
    ranks = [list(sampling.StepSampler(data, batch_size=3, world=2, rank=r, accum=1, seed=1)) for r in (0, 1)]
    steps = len(ranks[0]) // 3
    expected = [i for s in range(steps) for r in ranks for i in r[3 * s:3 * s + 3]]
    assert one == expected and sorted(one) == sorted(set(one))
    resumed = sampling.StepSampler(data, batch_size=3, world=1, rank=0, accum=2, seed=1)
    resumed.start_step = 2
    assert list(resumed) == one[12:]


def test_amp_auto_is_fp32_on_a_cpu():
    cpu = torch.device("cpu")
    assert processes.amp_settings("auto", cpu) == (None, False)
    assert processes.amp_settings("off", cpu) == (None, False)
    assert processes.amp_settings("bf16", cpu) == (torch.bfloat16, False)
    assert processes.amp_settings("fp16", cpu) == (torch.float16, False)  # no loss scaling on a CPU


@pytest.mark.parametrize("amp_dtype,rel", [(None, 1e-4), (torch.bfloat16, 5e-2)])
def test_teacher_targets_match_the_frozen_prior(amp_dtype, rel):
    from models import LifelongDepthNet
    torch.manual_seed(0)
    prior = LifelongDepthNet("resnet18", num_domains=2).eval()
    with torch.no_grad():  # non-trivial BN statistics, so that folding them is exercised
        for m in prior.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    teacher = engine_model.make_teacher(prior, "cpu", amp_dtype)
    assert not any(p.requires_grad for p in teacher.parameters())
    images = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        want = prior(images)[:2]
    got = engine_model.teacher_targets(teacher, images, 2)
    for (d, u), (t_d, t_u) in zip(want, got):
        for a, b in ((t_d, d), (t_u, u)):
            assert a.dtype == torch.float32 and a.shape == b.shape and not a.requires_grad
            err = (a - b).abs().max().item()
            assert err <= rel * b.abs().max().item(), err


# ---- one training per run folder -----------------------------------------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_data_root(tmp_path_factory.mktemp("n_data"), letters="N", n_train=4, n_test=2, n_replay=2)


def train_options(root, runs, *extra):
    return ["--data-root", str(root), "--runs-dir", str(runs), "--scale", "0.25", "--batch-size", "2",
            "--workers", "0", "--val-images", "0", "--proto-images", "2", "--encoder", "resnet18",
            "--max-steps", "1", "--quiet", *extra]


def test_a_run_folder_in_use_is_refused(root, tmp_path):
    import fcntl
    run_dir = tmp_path / "N"
    run_dir.mkdir()
    with open(run_dir / ".lock", "a+") as other:  # another training holds the folder
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        other.write("4242\n")
        other.flush()
        msg = error_of(train_cli.main, "N", "", train_options(root, tmp_path))
    assert "in use by another training" in msg and "4242" in msg
    assert not (run_dir / "log.jsonl").exists() and not (tmp_path / "N.pth.tar").exists()


# ---- a run folder name too long for the file system -----------------------------------
def test_too_long_runs_dir_is_one_line(root, tmp_path):
    msg = error_of(train_cli.main, "N", "", train_options(root, tmp_path / ("r" * 300)))
    assert "r" * 40 in msg


# ---- training data errors say what is wrong ------------------------------------------------------
def copy_root(root, tmp_path):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(root, data)
    return data


def test_unreadable_training_file_is_not_called_missing_ground_truth(root, tmp_path):
    data = copy_root(root, tmp_path)
    first = (data / dom.NYU.train_csv).read_text().splitlines()[0].split(",")[1]  # a depth file
    (data / first).write_bytes(b"broken")
    msg = error_of(train_cli.main, "N", "", train_options(data, tmp_path / "runs"))
    assert Path(first).name in msg and "no ground truth" not in msg


def test_empty_replay_csv_is_named(root, tmp_path):
    data = copy_root(root, tmp_path)
    (data / dom.NYU.replay_csv).write_text("")
    msg = error_of(train_cli.main, "N", "", train_options(data, tmp_path / "runs"))
    assert dom.NYU.replay_csv in msg and "--replay-size" not in msg


def test_too_small_input_size_is_blamed_on_the_domain(root, tmp_path, clean_registry):
    data = copy_root(root, tmp_path)
    for suffix in ("train", "test"):
        (data / f"tiny_{suffix}.csv").write_text((data / dom.NYU.train_csv).read_text())
    (data / "replay_tiny.csv").write_text((data / dom.NYU.replay_csv).read_text())
    (data / "domains.json").write_text(json.dumps([{"name": "tiny", "letter": "T", "input_size": [24, 24],
                                                    "depth_encoding": dom.NYU.encoding("train")}]))
    argv = train_options(data, tmp_path / "runs", "--order", "T")
    argv[argv.index("--scale") + 1] = "1"
    msg = error_of(train_cli.main, "T", "", argv)
    assert "input_size" in msg and "domains.json" in msg and "--scale" not in msg


def test_training_into_a_long_legal_name_saves_its_model(root, tmp_path):
    """The stage's final save used to fail after the whole run: its temporary name was too long."""
    out = tmp_path / ("n" * 240 + ".pth.tar")  # 248 bytes: legal
    assert train_cli.main("N", "", train_options(root, tmp_path, "--out", str(out))) == str(out)
    assert load_checkpoint(out).num_domains == 1
