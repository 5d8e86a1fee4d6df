"""Fixtures shared by the test files."""
import os

import pytest

from models.runtimes import BACKEND_ENV

# DepthPredictor's default backend depends on the CPU kind (OpenVINO on AMX, ONNX Runtime on
# AVX2-only CPUs): the suite pins PyTorch, so that the same tests check the same path on every
# machine (and subprocesses inherit it); tests/test_backend.py tests the choice itself with forced
# capabilities. LIFELONG_MONODEPTH_BACKEND=auto runs the suite on this machine's own choice.
os.environ.setdefault(BACKEND_ENV, "torch")

from base import domains as dom
from data import synthetic
from helpers import torch_threads


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A tiny synthetic data root (all three domains, quarter-size frames), generated once."""
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(str(root), n_train=16, n_test=4, replay_size=8, scale=0.25, seed=0,
                       workers=1, progress=False)
    return root


@pytest.fixture
def clean_registry():
    """Remove the custom domains a test registered."""
    yield
    for spec in dom.all_domains():
        if spec not in dom.BUILTIN:
            dom.unregister_domain(spec)


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a whole test module (``pytestmark = pytest.mark.usefixtures(...)``)."""
    with torch_threads(1):
        yield
