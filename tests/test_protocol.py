"""--protocol authors pinned to the released code.

Each test states what the authors' code does (a small reference written from its source:
train_NK.py / train_NKS.py / test.py / test_inference.py / util.py / loaddata_scannet.py, HEAD
24b1e69) and checks that the project's `authors` option does exactly that, and that `ours` does not.
Nothing here imports the upstream code.
"""
from __future__ import annotations

import argparse
import copy
import math

import numpy as np
import pytest
import torch
from PIL import Image

from cli import test as test_cli
from cli import options
from helpers import make_data_root, make_net, save_authors_checkpoint, torch_threads

from engine import model as engine_model
from engine import stage as engine_stage
from engine import processes
from engine.options import resolve_options
from models import LifelongDepthNet
from cli import train as train_cli
from metrics import ErrorAggregator
from inference.prototypes import authors_distances, compute_authors_prototypes, prototype_distances

SCALE = 0.25


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_data_root(tmp_path_factory.mktemp("proto_data"), n_train=12, n_test=3, n_replay=6,
                          frame_scale=SCALE)


def _opts(default_order, argv):
    parser = train_cli.build_parser(default_order, "test")
    return resolve_options(train_cli.stage_options(parser.parse_args(argv), default_order))


def _common(root, runs):
    return ["--data-root", str(root), "--scale", str(SCALE), "--encoder", "resnet18", "--val-images",
            "0", "--workers", "0", "--quiet", "--runs-dir", str(runs), "--batch-size", "4",
            "--replay-size", "6"]


# ------------------------------------------------------------------------ 1. old heads at a stage
def test_authors_protocol_reinitialises_old_heads_at_an_nk_stage(root, tmp_path):
    """Upstream: model = model_ll(copy.deepcopy(model_), num_tasks=2) with is_training=False, so
    the student copies E and MFF from the prior and builds EVERY head anew (Uncertainty_depth:
    fresh convolutions, BatchNorm running_mean 0 / running_var 1); the teacher keeps the old heads."""
    with torch_threads(1):
        train_cli.main("N", "first", _common(root, tmp_path) + ["--max-steps", "1"])
        prior = torch.load(tmp_path / "N.pth.tar", map_location="cpu", weights_only=False)["state_dict"]
        ctx = processes.Dist("cpu")
        for protocol in ("authors", "ours"):
            stage = engine_stage.Stage(_opts("NK", _common(root, tmp_path) + ["--protocol", protocol]), ctx)
            sd = stage.net.state_dict()
            trunk = [k for k in prior if k.startswith(("E.", "MFF."))]
            assert all(torch.equal(sd[k], prior[k]) for k in trunk)  # E and MFF copied either way
            head0 = [k for k in prior if k.startswith("task0.")]
            same = [torch.equal(sd[k], prior[k]) for k in head0 if not k.endswith("num_batches_tracked")]
            bn = stage.net.heads[0].depth.bn0
            if protocol == "authors":
                assert not any(same[:1]) and sum(same) < len(same) // 2
                assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
                assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
                # the teacher still gives the prior's head-0 outputs
                x = torch.randn(1, 3, 64, 96)
                prior_net = LifelongDepthNet("resnet18", 1)
                prior_net.load_state_dict(prior)
                want = prior_net.eval()(x, domain=0)[0]
                got = engine_model.teacher_targets(stage.teacher, x, 1)[0][0]
                assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)
            else:
                assert all(same)  # ours keeps the prior's head


# ------------------------------------------------------------------------ 2. BatchNorm of all heads
def _bn_state(net):
    return {k: v.clone() for k, v in net.state_dict().items() if "running" in k}


def test_bn_all_heads_moves_every_heads_statistics_like_the_whole_network_forward():
    """Upstream's step: out, _ = net(image) (every head, train mode), then net(replay_img) for each
    replay batch: every head's running statistics see the new batch, then each replay batch."""
    with torch_threads(1):
        torch.manual_seed(0)
        net = make_net(3).train()
        image, depth = torch.randn(2, 3, 64, 96), torch.rand(2, 1, 32, 48) * 5 + 1
        replay = [(torch.randn(2, 3, 64, 96), torch.rand(2, 1, 32, 48) * 5 + 1) for _ in range(2)]
        ref = copy.deepcopy(net)
        for x in (image, *(r for r, _ in replay)):
            ref(x)  # the authors' whole-network forward, losses aside
        results = {}
        for flag in (True, False):
            student = copy.deepcopy(net)
            loss = engine_stage.StageLoss(student, new_head=2, distill_w=[], replay_w=[10.0, 100.0],
                                      replay_heads=[0, 1], bn_all_heads=flag)
            terms = loss(image, depth, None, replay)
            terms["total"].backward()
            results[flag] = (terms["total"].item(), _bn_state(student),
                             [p.grad.clone() for p in student.parameters() if p.grad is not None])
        want = _bn_state(ref)
        for k, v in results[True][1].items():
            assert torch.allclose(v, want[k], rtol=1e-5, atol=1e-6), k
        # without the option head 0 never sees the new batch: its statistics differ
        assert not torch.allclose(results[False][1]["task0.depth.bn0.running_mean"],
                                  want["task0.depth.bn0.running_mean"])
        # the loss and the gradients do not depend on it
        assert results[True][0] == pytest.approx(results[False][0], rel=1e-6)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[True][2], results[False][2]))


# ------------------------------------------------------------------------ 3. the end of replay
def _upstream_schedule(main_steps, replay_batches, epochs):
    """train_NKS.py: replay iterators made per epoch; try: next(nyu), next(kitti) -> weights
    10/100/10/100 with replay; except StopIteration -> loss_task1*10 + loss_task2*10, no replay."""
    out = []
    for _ in range(epochs):
        it = iter(range(replay_batches))
        for _ in range(main_steps):
            try:
                next(it)
                out.append((True, [10.0, 100.0]))
            except StopIteration:
                out.append((False, [10.0, 10.0]))
    return out


def test_authors_replay_stops_and_the_second_distillation_weight_drops(root, tmp_path, monkeypatch):
    with torch_threads(1):
        for k, letters in enumerate(("N", "NK")):
            net = make_net(k + 1)
            save_authors_checkpoint(tmp_path / f"{letters}.pth.tar", net)
        # 12 training rows, batch 4 (partial batches: ceil) -> 3 steps per epoch; replay 6 rows -> 2
        # batches (4 + a partial 2), so the third step of each epoch has no replay
        opts = _opts("NKS", _common(root, tmp_path) + ["--order", "NKS", "--protocol", "authors",
                                                       "--max-steps", "6", "--epochs", "2"])
        stage = engine_stage.Stage(opts, processes.Dist("cpu"))
        (tmp_path / "NKS").mkdir()  # the run folder main() makes
        seen = []

        def record(image, depth, teacher_out, replay, distill_w):
            seen.append((len(replay) == 2, list(distill_w if distill_w is not None else stage.distill_w),
                         [r[0].shape[0] for r in replay]))
            return {"total": sum(p.sum() for p in stage.net.parameters()) * 0.0}

        monkeypatch.setattr(stage, "step_module", record)
        stage.train()
    want = _upstream_schedule(main_steps=3, replay_batches=2, epochs=2)
    assert [(r, w) for r, w, _ in seen] == want
    assert [s for _, _, s in seen if s] == [[4, 4], [2, 2]] * 2  # partial last replay batch


# ------------------------------------------------------------------------ 4. selection arithmetic
class _Identity(torch.nn.Module):
    def features(self, x):
        return x


def test_authors_selection_arithmetic_on_a_hand_made_case():
    """test_feas: sum of the feature maps of the replay images, / 499 after 500 images (N-1);
    test: d = ((feas - proto_resized_to_query)**2).mean(), argmin."""
    a = [torch.full((1, 1, 2, 2), v) for v in (1.0, 2.0, 6.0)]          # domain 0: 3 images
    b = [torch.tensor([[[[0.0, 2.0], [4.0, 6.0]]]]) for _ in range(2)]  # domain 1: 2 images
    protos = compute_authors_prototypes(_Identity(), [[{"image": x} for x in a], [{"image": x} for x in b]])
    assert torch.equal(protos[0], torch.full((1, 2, 2), 9.0 / 2))       # (1+2+6) / (3-1)
    assert torch.equal(protos[1], torch.tensor([[[0.0, 4.0], [8.0, 12.0]]]))  # 2x / (2-1)
    # a 3x3 query: each 2x2 prototype resized to 3x3 (align_corners=True): domain 1 becomes
    # [[0,2,4],[4,6,8],[8,10,12]]; domain 0 stays 4.5 everywhere
    q = torch.full((1, 1, 3, 3), 5.0)
    d = authors_distances(q, protos)
    d1 = sum((5.0 - v) ** 2 for v in (0, 2, 4, 4, 6, 8, 8, 10, 12)) / 9
    assert d[0, 0].item() == pytest.approx(0.25)
    assert d[0, 1].item() == pytest.approx(d1)
    assert prototype_distances(q, {"authors": protos}, "authors").argmin(1).item() == 0


# ------------------------------------------------------------------------ 5. RMSE and delta rule
def test_pixel_weighted_rmse_and_delta_rule_of_the_authors_on_hand_computed_arrays():
    """util.evaluateError per image (valid = gt > 0, no clamp, delta = max(p/g, g/p) <= 1.25^k
    computed with IEEE division, so a negative prediction passes), addErrors weights every value by
    the image's valid-pixel count, averageErrors divides by the total count."""
    img1 = (np.array([[1.25, 3.0], [2.0, 0.0]]), np.array([[1.0, 1.0], [2.0, 0.0]]))  # 3 valid
    img2 = (np.array([-1.0, 4.0, 0.0, 2.0]), np.array([2.0, 4.0, 1.0, 2.0]))          # 4 valid
    agg = ErrorAggregator(mode="pixel", rmse="weighted", clamp=False, delta_le=True)
    for p, g in (img1, img2):
        agg.add(p, g)
    r = agg.result()
    rmse1 = math.sqrt((0.25 ** 2 + 2.0 ** 2 + 0.0) / 3)
    rmse2 = math.sqrt((3.0 ** 2 + 0 + 1.0 + 0) / 4)
    assert r["rmse"] == pytest.approx((3 * rmse1 + 4 * rmse2) / 7)
    assert r["abs_rel"] == pytest.approx((0.25 + 2.0 + 0 + 1.5 + 0 + 1.0 + 0) / 7)
    assert r["mae"] == pytest.approx((0.25 + 2 + 0 + 3 + 0 + 1 + 0) / 7)
    # delta1: 1.25 (<= passes), 3 no, 2 yes; -1 (negative: passes), 4 yes, 0 (inf: no), 2 yes
    assert r["delta1"] == pytest.approx(5 / 7)
    assert math.isnan(r["log10"])  # log10 of a negative prediction, as theirs
    ours = ErrorAggregator(mode="pixel")
    for p, g in (img1, img2):
        ours.add(p, g)
    assert ours.result()["delta1"] == pytest.approx(3 / 7)  # < excludes 1.25; clamped -1 and 0 fail


def test_protocol_authors_sets_the_authors_evaluation_in_test_py():
    T = test_cli
    args = T.build_parser().parse_args(["--protocol", "authors"])
    settings = options.eval_options(args)
    assert settings.rules() == {"crop": "none", "cap": False, "aggregate": "pixel",
                                "rmse": "weighted", "pred_clamp": False, "delta": "le"}
    assert (settings.full_frame, settings.scannet_resize) == ("kitti", "once")
    # the authors' plain float32 forward: the runtime settings say so, the parsed options stay as given
    assert options.runtime_options(args).fast is False and args.no_fast is False
    assert options.runtime_options(T.build_parser().parse_args([])).fast is True
    args = T.build_parser().parse_args(["--protocol", "authors", "--delta", "lt"])  # explicit wins
    settings = options.eval_options(args)
    assert settings.delta == "lt" and settings.rmse == "weighted"
    settings = options.eval_options(T.build_parser().parse_args([]))
    assert settings.rules()["delta"] == "lt" and settings.full_frame == "none"
    # the dataclass alone, no argparse: the same protocol rule
    from evaluation.evaluate import EvalOptions
    assert EvalOptions(protocol="authors").resolved().rules() == options.eval_options(
        T.build_parser().parse_args(["--protocol", "authors"])).rules()


# ------------------------------------------------------------------------ 6. ScanNet single resize
def test_scannet_colour_is_resized_once_as_upstream(tmp_path):
    """loaddata_scannet.getTestingData: Scale([320, 240]) on the colour image as read (PIL
    BILINEAR), CenterCrop 304x228, /255, ImageNet normalisation."""
    from loaders import get_dataset
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (968, 1296, 3), dtype=np.uint8)  # ScanNet's colour and depth sizes
    (tmp_path / "c").mkdir()
    Image.fromarray(rgb).save(tmp_path / "c" / "0.png")
    Image.fromarray(np.full((480, 640), 2000, np.uint16)).save(tmp_path / "c" / "0d.png")
    (tmp_path / "scannet_test.csv").write_text("c/0.png,c/0d.png\n")
    small = np.asarray(Image.fromarray(rgb).resize((320, 240), Image.BILINEAR), dtype=np.float32) / 255
    x, y = int(round((320 - 304) / 2.0)), int(round((240 - 228) / 2.0))
    crop = small[y:y + 228, x:x + 304]
    want = (torch.from_numpy(crop).permute(2, 0, 1) - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    once = get_dataset("S", "test", str(tmp_path), train=False, scannet_resize="once")[0]["image"]
    twice = get_dataset("S", "test", str(tmp_path), train=False)[0]["image"]
    assert torch.allclose(once, want, atol=1e-5)
    assert (twice - want).abs().max() > 0.05


# ------------------------------------------------------------------------ test.py end to end
def _upstream_evaluate_error(output, target):
    """util.evaluateError on the valid pixels (float32 torch, no clamp, <=)."""
    diff = (output - target).abs()
    n = float(target.numel())
    ratio = torch.maximum(output / target, target / output)
    return {"rmse": math.sqrt(float((diff ** 2).sum()) / n), "mae": float(diff.sum()) / n,
            "abs_rel": float((diff / target).sum()) / n,
            "log10": float((torch.log10(output) - torch.log10(target)).abs().sum()) / n,
            **{f"delta{k}": float((ratio <= 1.25 ** k).float().sum()) / n for k in (1, 2, 3)}}


def test_test_py_protocol_authors_gives_the_upstream_numbers_on_an_authors_file(root, tmp_path):
    """upstream test.py: batch 1, out = net(image) (every head), out[task][0] upsampled bilinearly
    (align_corners=True) to the ground truth, mask = depth > 0, evaluateError, and each value summed
    with weight = valid pixels, divided by the total; KITTI frames whole, NYU/ScanNet centre crops."""
    from loaders import get_dataset
    T = test_cli
    with torch_threads(1):
        net = make_net(3, seed=3)
        path = save_authors_checkpoint(tmp_path / "NKS.pth.tar", net)
        out = T.main(["--checkpoint", str(path), "--order", "NKS", "--protocol", "authors",
                      "--data-root", str(root), "--scale", str(SCALE), "--batch-size", "1", "--quiet",
                      "--json", str(tmp_path / "r.json")])
        for head, letter in enumerate("NKS"):
            # whole KITTI frames at the pixel scale the K head learned (the files' own, as upstream
            # at full resolution; evaluation.evaluate.full_frame_scale), whatever --scale
            ds = get_dataset(letter, "test", str(root), train=False, scale=1.0 if letter == "K" else SCALE,
                             full_frame=letter == "K", scannet_resize="once")
            sums, total = {}, 0
            for i in range(len(ds)):
                item = ds[i]
                with torch.no_grad():
                    pred = net.eval()(item["image"][None])[head][0]
                gt = item["depth"][None]
                pred = torch.nn.functional.interpolate(pred, size=gt.shape[-2:], mode="bilinear",
                                                       align_corners=True)
                mask = gt > 0
                errors = _upstream_evaluate_error(pred[mask], gt[mask])
                n = int(mask.sum())
                total += n
                for k, v in errors.items():
                    sums[k] = sums.get(k, 0.0) + v * n
            got = out["results"][letter]
            top, left, frame_h, frame_w = ds[0]["window"].tolist()  # K whole, N and S centre crops
            assert ((top, left, frame_h, frame_w) == (0, 0) + tuple(ds[0]["image"].shape[-2:])) == (letter == "K")
            for k, v in sums.items():
                assert got[k] == pytest.approx(v / total, rel=2e-5, abs=1e-6), (letter, k)


# ------------------------------------------------------------------------ the lda selector
def test_lda_selector_discounts_a_direction_that_varies_within_each_domain():
    """Domain 0 at x ~ 0, domain 1 at x ~ 1 (spread 0.05); within each, y varies by +-10 (a
    nuisance such as brightness) and domain 1's mean sits 6 higher in y. The query (0.1, 5) is
    domain 0 by x, but nearer domain 1's mean in plain L2; the Mahalanobis distance gets it right."""
    from inference.prototypes import fit_lda, lda_distances
    ys = torch.linspace(-10, 10, 21, dtype=torch.float64)
    xs = 0.05 * torch.randn(21, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d0 = torch.stack([xs, ys], 1)
    d1 = torch.stack([1.0 + xs.flip(0), ys + 6.0], 1)
    lda = fit_lda([d0, d1], shrink=0.01)
    q = torch.tensor([[0.1, 5.0]])
    assert torch.cdist(q, lda["means"]).argmin(1).item() == 1        # L2 to the means: wrong
    assert lda_distances(q, lda).argmin(1).item() == 0               # Mahalanobis: right
    # the shrunk covariance is what was inverted: S' = 0.99 S + 0.01 tr(S)/2 I
    resid = torch.cat([d0 - d0.mean(0), d1 - d1.mean(0)])
    cov = resid.T @ resid / (resid.shape[0] - 2)
    cov = 0.99 * cov + 0.01 * torch.trace(cov) / 2 * torch.eye(2, dtype=torch.float64)
    assert torch.allclose(lda["precision"].double(), torch.linalg.inv(cov), rtol=1e-5)
