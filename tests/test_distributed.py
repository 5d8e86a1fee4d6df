"""Training under torchrun: two gloo processes on the CPU against one process with the same global batch."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from models import load_checkpoint, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def train_args(root, out, *extra):
    return ["--data-root", str(root), "--out", str(out), "--scale", "0.25", "--batch-size", "2",
            "--workers", "0", "--val-images", "0", "--proto-images", "4", "--encoder", "resnet18",
            "--epochs", "1", "--max-steps", "3", "--quiet", *extra]


def free_port() -> int:
    """A port no one listens on now (a fixed one collides with another suite running on the machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def test_two_processes_match_one_process_with_the_same_global_batch(synthetic_root, tmp_path):
    """A lifelong stage (NK: teacher, distillation, a replay buffer split by DistributedSampler)
    under torchrun with 2 gloo processes ends with the weights of one process with --grad-accum 2."""
    prior = tmp_path / "N.pth.tar"
    run([sys.executable, "train_N.py", *train_args(synthetic_root, prior)])
    outs = {name: tmp_path / name / "NK.pth.tar" for name in ("ddp", "single", "half")}
    for out in outs.values():
        out.parent.mkdir()
    stage = ["train_NK.py", "--order", "NK", "--prior", str(prior)]
    log = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               *stage, *train_args(synthetic_root, outs["ddp"])])
    assert "cpu x2" in log and log.count("wrote ") == 1  # rank 0 alone reports and writes
    assert "distill N" in log and "replay N" in log
    run([sys.executable, *stage, *train_args(synthetic_root, outs["single"], "--grad-accum", "2")])
    # control: the same steps with half the global batch must land visibly elsewhere
    run([sys.executable, *stage, *train_args(synthetic_root, outs["half"])])

    ddp, single, half = (read_checkpoint(outs[k])[0] for k in ("ddp", "single", "half"))
    assert not any(k.startswith("module.") for k in ddp)  # loads anywhere, no DDP prefix
    net = load_checkpoint(outs["ddp"])
    assert net.num_domains == 2 and net.meta["letters"] == "NK"
    params = [name for name, _ in net.named_parameters()]
    same_batch = max((ddp[k] - single[k]).abs().max().item() for k in params)
    other_batch = max((ddp[k] - half[k]).abs().max().item() for k in params)
    print(f"largest parameter difference: same global batch {same_batch:.2e}, half batch {other_batch:.2e}")
    assert same_batch < 1e-4 and other_batch > 100 * max(same_batch, 1e-7)
    files = sorted(p.name for p in (tmp_path / "ddp").iterdir())
    assert files == ["NK", "NK.pth.tar"]


def test_resume_across_a_change_of_world_size(synthetic_root, tmp_path):
    """Epoch 1 in one process (--grad-accum 2), epoch 2 resumed under torchrun with 2 processes: the
    same weights as two epochs in one process, replay stream included. (The replay position was once
    computed with the new run's --grad-accum instead of the saved run's: the replay stream then
    repeated an epoch, and the weights drifted by ~5 % of the epoch's update.)"""
    prior = tmp_path / "N.pth.tar"
    run([sys.executable, "train_N.py", *train_args(synthetic_root, prior)])
    stage = ["train_NK.py", "--order", "NK", "--prior", str(prior)]
    no_limit = ["--max-steps", "1000"]  # train_args' step limit off: whole epochs
    straight, split = tmp_path / "straight" / "NK.pth.tar", tmp_path / "split" / "NK.pth.tar"
    run([sys.executable, *stage, *train_args(synthetic_root, straight, "--grad-accum", "2", "--epochs", "2",
                                             *no_limit)])
    run([sys.executable, *stage, *train_args(synthetic_root, split, "--grad-accum", "2", *no_limit)])
    state = torch.load(split.parent / "NK" / "last.pth.tar", weights_only=False)
    assert (state["epoch"], state["world_size"]) == (1, 1)
    after_epoch1 = state["state_dict"]
    log = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               *stage, *train_args(synthetic_root, split, "--epochs", "2", "--resume", *no_limit)])
    assert "resumed" in log and "cpu x2" in log
    a, b = read_checkpoint(straight)[0], read_checkpoint(split)[0]
    # Parameters only: BatchNorm running statistics are per process under DDP (no SyncBatchNorm).
    # DDP's all-reduce mean and one process's accumulated mean agree here to the last bit; the
    # bound leaves room for rounding, far below what a wrong replay or sampler position causes.
    params = [name for name, _ in load_checkpoint(straight).named_parameters()]
    differ = sum(((a[k] - b[k]).double() ** 2).sum().item() for k in params) ** 0.5
    moved = sum(((a[k] - after_epoch1[k]).double() ** 2).sum().item() for k in params) ** 0.5
    print(f"resume across world size: |difference| {differ:.3e}, |epoch 2 update| {moved:.3e}")
    assert differ < 1e-3 * moved
