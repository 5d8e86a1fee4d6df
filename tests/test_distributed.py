"""Training under torchrun: two gloo processes on the CPU against one process with the same global batch."""
import os
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


def run(cmd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def test_two_processes_match_one_process_with_the_same_global_batch(synthetic_root, tmp_path):
    ddp_out, single_out = tmp_path / "ddp" / "N.pth.tar", tmp_path / "single" / "N.pth.tar"
    log = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
               "train_N.py", *train_args(synthetic_root, ddp_out)])
    assert "cpu x2" in log and log.count("wrote ") == 1  # rank 0 alone reports and writes
    run([sys.executable, "train_N.py", *train_args(synthetic_root, single_out, "--grad-accum", "2")])

    # control: the same steps with half the global batch must land visibly elsewhere
    half_out = tmp_path / "half" / "N.pth.tar"
    run([sys.executable, "train_N.py", *train_args(synthetic_root, half_out)])

    ddp, single, half = (read_checkpoint(p)[0] for p in (ddp_out, single_out, half_out))
    assert not any(k.startswith("module.") for k in ddp)  # loads anywhere, no DDP prefix
    net = load_checkpoint(ddp_out)
    params = [name for name, _ in net.named_parameters()]
    same_batch = max((ddp[k] - single[k]).abs().max().item() for k in params)
    other_batch = max((ddp[k] - half[k]).abs().max().item() for k in params)
    print(f"largest parameter difference: same global batch {same_batch:.2e}, half batch {other_batch:.2e}")
    assert same_batch < 1e-4 and other_batch > 100 * max(same_batch, 1e-7)
    files = sorted(p.name for p in (tmp_path / "ddp").iterdir())
    assert files == ["N", "N.pth.tar"]
