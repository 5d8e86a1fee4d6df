""""No head fits" (inference/ood.py): the per-head Mahalanobis score, its verdict monotone in the
score, and the verdict's definition stored in the checkpoint and in exports' metadata."""
import json
import zipfile

import numpy as np
import pytest
import torch

from inference import ood as O

pytestmark = pytest.mark.usefixtures("single_thread")


def clouds(seed, n=300, p=6):
    """Three heads' descriptors: Gaussian clouds with their own shapes, far apart."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(3):
        scale = rng.uniform(0.5, 2.0, p)
        x = rng.standard_normal((n, p)) * scale
        x[:, 0] += 10.0 * k
        out.append(torch.from_numpy(x))
    return out


def test_the_verdict_is_monotone_in_its_score_and_flags_what_no_head_saw():
    fit, cal, fresh = clouds(0), clouds(1), clouds(2)
    stats = O.fit_ood(fit, cal)
    inside = O.ood_scores(torch.cat(fresh), stats)
    assert float(O.ood_verdict(inside, stats).float().mean()) <= 0.01  # fresh in-domain frames
    far = torch.zeros(50, 6, dtype=torch.float64)
    far[:, 3] = torch.linspace(8.0, 40.0, 50)  # away from every head, along a direction none varies in much
    scores = torch.cat([inside, O.ood_scores(far, stats)])
    verdict = O.ood_verdict(scores, stats)
    order = torch.argsort(scores)
    flags = verdict[order].int()
    assert torch.all(flags[1:] >= flags[:-1])  # sorted by score, the verdict switches once
    assert bool(O.ood_verdict(O.ood_scores(far, stats), stats).all())
    # the score's unit: the held-out frames' quantile, so a head's own held-out quantile scores 1
    for k in range(3):
        d = O.head_distances(cal[k], stats)[:, k] / stats["normalisers"][k]
        assert float(torch.quantile(d.double(), O.OOD_QUANTILE)) == pytest.approx(1.0, rel=1e-5)


@pytest.fixture(scope="module")
def frames_checkpoint(tmp_path_factory):
    from helpers import make_checkpoint, make_data_root
    from inference.replay import add_frame_statistics
    root = make_data_root(tmp_path_factory.mktemp("data"), n_train=10, n_test=3, n_replay=10)
    d = tmp_path_factory.mktemp("ckpt")
    make_checkpoint(d / "NKS.pth.tar", "NKS", scale=0.25, prototypes="replay", data_root=root)
    add_frame_statistics(d / "NKS.pth.tar", d / "NKS_frames.pth.tar", root, max_images=10, quiet=True)
    return root, d / "NKS_frames.pth.tar"


def test_the_verdict_is_stored_in_the_checkpoint_and_used_on_frames(frames_checkpoint):
    from data.synthetic import render_aerial
    from inference.predictor import DepthPredictor
    from models import read_checkpoint
    _, ckpt = frames_checkpoint
    stats = read_checkpoint(ckpt)[1]["prototypes"]["frames"]["ood"]
    assert stats["kind"] == "mahalanobis_per_head" and stats["descriptor"] == O.DESCRIPTOR
    assert stats["means"].shape[0] == 3 and stats["precisions"].shape[:1] == (3,)
    assert stats["threshold"] == O.OOD_MARGIN and len(stats["normalisers"]) == 3
    predictor = DepthPredictor.from_checkpoint(ckpt)
    for i in range(3):
        r = predictor.predict_image(render_aerial(i, seed=5, scale=0.25)["image"])
        assert r["ood_score"] is not None and r["ood"] == (r["ood_score"] > stats["threshold"])
    # the API gives the verdict and the interval with what it means
    r = predictor.predict_image(render_aerial(0, seed=5, scale=0.25)["image"], interval=0.9)
    iv = r["interval"]
    assert iv["lower"].shape == r["depth"].shape and np.all(iv["upper"] >= iv["lower"])
    assert "central 90 % interval in metres" in iv["meaning"] and iv["coverage"] == 0.9


def test_exports_carry_the_verdict_and_the_calibration(frames_checkpoint, tmp_path):
    from inference.export import export_net
    from models import load_checkpoint
    _, ckpt = frames_checkpoint
    net = load_checkpoint(ckpt)
    meta = export_net(net, tmp_path / "m.ts", domain="K")
    with zipfile.ZipFile(tmp_path / "m.ts") as z:
        stored = json.loads(next(z.read(n) for n in z.namelist() if n.endswith("meta.json")))
    assert stored["out_of_domain"]["threshold"] == O.OOD_MARGIN
    assert stored["out_of_domain"]["normalisers"] == pytest.approx(net.meta["prototypes"]["frames"]["ood"]["normalisers"])
    assert "uncertainty_calibration" in stored and meta["out_of_domain"]["kind"] == "mahalanobis_per_head"
