"""test.py and test_inference.py on a data-format error (an unreadable test image): one error line
that names the file, with and without loader workers."""
import shutil
from pathlib import Path

import pytest
import torch

from base import domains as dom
from cli import test as test_cli
from cli import test_inference as test_inference_cli
from helpers import error_of, make_checkpoint, make_data_root

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """One NYU head (its pooled prototype random: one head is always the nearest)."""
    path = tmp_path_factory.mktemp("ckpt") / "N.pth.tar"
    make_checkpoint(path, "N", scale=0.25, prototypes={"pooled": torch.randn(1, 128)})
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_data_root(tmp_path_factory.mktemp("n_data"), letters="N", n_train=4, n_test=2, n_replay=2)


@pytest.mark.parametrize("command", ["test", "test_inference"])
@pytest.mark.parametrize("workers", ["0", "1"])
def test_evaluation_data_errors_are_one_line(root, ckpt, tmp_path, command, workers):
    data = tmp_path / "data"
    shutil.copytree(root, data)
    first = (data / dom.NYU.test_csv).read_text().splitlines()[0].split(",")[0]
    (data / first).write_bytes(b"not an image")
    main = test_cli.main if command == "test" else test_inference_cli.main
    argv = ["--checkpoint", str(ckpt), "--data-root", str(data), "--workers", workers, "--device", "cpu",
            "--quiet"]
    if command == "test":
        argv += ["--json", str(tmp_path / "r.json")]
    msg = error_of(main, argv)
    assert Path(first).name in msg and "not a readable image" in msg

