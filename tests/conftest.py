"""Session fixtures shared by the test files."""
import pytest

import synthetic


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A tiny synthetic data root (all three domains, quarter-size frames), generated once."""
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(str(root), n_train=16, n_test=4, replay_size=8, scale=0.25, seed=0,
                       workers=1, progress=False)
    return root
