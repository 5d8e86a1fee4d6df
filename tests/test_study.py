"""study.py: the matrix maths, the plan of runs, and a --quick study that reuses its runs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import study

ORDERS = "NKS,KNS"
STRATEGIES = "ours,finetune"


# ------------------------------------------------------------------------------- pure pieces
def test_lifelong_summary_on_a_hand_made_matrix():
    # rows: after stage 1, 2, 3; columns: domains in learning order (errors, lower is better)
    m = [[1.0],
         [1.5, 2.0],
         [1.2, 2.5, 3.0]]
    s = study.lifelong_summary(m, metric="rmse")
    assert s["final"] == [1.2, 2.5, 3.0]
    assert s["final_average"] == pytest.approx((1.2 + 2.5 + 3.0) / 3)
    assert s["just_learned"] == [1.0, 2.0, 3.0]
    # forgetting = final - best earlier (positive = worse): 1.2 - 1.0, 2.5 - 2.0
    assert s["forgetting"] == pytest.approx([0.2, 0.5])
    assert s["average_forgetting"] == pytest.approx(0.35)
    # BWT = just learned - final (positive = improved)
    assert s["bwt_per_domain"] == pytest.approx([-0.2, -0.5])
    assert s["bwt"] == pytest.approx(-0.35)
    assert s["stage_average"] == pytest.approx([1.0, 1.75, (1.2 + 2.5 + 3.0) / 3])

    # an accuracy (higher is better): signs flip so that positive forgetting still means "worse"
    a = study.lifelong_summary([[0.9], [0.8, 0.7]], metric="delta1")
    assert a["higher_is_better"] is True
    assert a["forgetting"] == pytest.approx([0.1])
    assert a["bwt"] == pytest.approx(-0.1)

    # a domain that improved after it was learned: negative forgetting, positive BWT
    b = study.lifelong_summary([[2.0], [1.5, 1.0]], metric="abs_rel")
    assert b["forgetting"] == pytest.approx([-0.5])
    assert b["bwt"] == pytest.approx(0.5)


def test_relative_gap_and_formatting():
    assert study.relative_gap(1.1, 1.0) == pytest.approx(0.1)
    assert study.relative_gap(None, 1.0) is None
    assert study.relative_gap(1.0, 0) is None
    assert study.fmt(None) == "-"
    assert study.fmt(float("nan")) == "-"
    assert study.fmt(0.1234, 2, True) == "+0.12"
    assert study.pct(-0.05) == "-5.0%"


def make_plan(tmp_path, orders="NKS,NSK,KNS,KSN,SNK,SKN", strategies="ours,finetune,distill,replay,joint",
              single_head=True, variants=()):
    args = study.build_parser().parse_args(["--runs-dir", str(tmp_path / "runs"), "--orders", orders,
                                            "--strategies", strategies])
    s = study.resolve_settings(args)
    return study.Plan(s, study.parse_orders(orders), study.parse_strategies(strategies), single_head,
                      [study.parse_variant(v) for v in variants], study.parse_orders("NKS") if variants else [])


def test_plan_of_the_full_study(tmp_path):
    plan = make_plan(tmp_path)
    groups = {}
    for job in plan.jobs.values():
        groups.setdefault(job.group, []).append(job)
    assert sorted(j.letters for j in groups["first"]) == ["K", "N", "S"]
    lifelong_jobs = groups["lifelong"]
    assert len([j for j in lifelong_jobs if len(j.letters) == 2]) == 24  # 6 pairs x 4 strategies
    assert len([j for j in lifelong_jobs if len(j.letters) == 3]) == 24  # 6 orders x 4 strategies
    # joint: once per domain set, named in the fixed N, K, S order
    assert sorted(j.letters for j in groups["joint"]) == ["KS", "NK", "NKS", "NS"]
    assert [j.shared_head for j in groups["shared"]] == [True]
    runs = plan.s.runs_dir
    # the matrix of order KNS under joint: single K, then joint NK, then joint NKS
    assert plan.stage_path("KNS", 1, "joint") == runs / "K.pth.tar"
    assert plan.stage_path("KNS", 2, "joint") == runs / "NK_joint.pth.tar"
    assert plan.stage_path("SKN", 3, "joint") == runs / "NKS_joint.pth.tar"
    # lifelong stages chain to their own strategy's prior; first stages are shared (no suffix)
    assert plan.jobs["NKS_finetune"].prior == runs / "NK_finetune.pth.tar"
    assert plan.jobs["NK_distill"].prior == runs / "N.pth.tar"
    assert plan.jobs["NKS"].prior == runs / "NK.pth.tar"
    # every job comes after its prior
    seen = set()
    for job in plan.ordered():
        assert job.prior is None or job.prior in seen
        seen.add(job.out)
    # the engine gets every study setting
    argv = plan.jobs["NKS_replay"].argv(plan.s)
    for flag in ("--order", "--strategy", "--prior", "--out", "--data-root", "--scale", "--epochs",
                 "--batch-size", "--seed", "--val-images", "--replay-size"):
        assert flag in argv


def test_plan_variants_start_from_the_shared_first_stage(tmp_path):
    plan = make_plan(tmp_path, orders="NKS", strategies="ours", single_head=False,
                     variants=["w100:ours:--distill-weights 100,1000 --replay-weights 100,1000"])
    runs = plan.s.runs_dir
    v2 = plan.jobs["variant w100:NK"]
    v3 = plan.jobs["variant w100:NKS"]
    assert v2.prior == runs / "N.pth.tar"
    assert v3.prior == runs / "variants" / "w100" / "NK.pth.tar"
    assert v3.argv(plan.s)[-4:] == ["--distill-weights", "100,1000", "--replay-weights", "100,1000"]
    with pytest.raises(SystemExit):
        study.parse_variant("bad")
    with pytest.raises(SystemExit):
        study.parse_variant("x:joint:--epochs 2")


def test_interrupted_stage_is_resumed(tmp_path, monkeypatch):
    """A run folder with last.pth.tar but no final checkpoint: the engine is called with --resume."""
    plan = make_plan(tmp_path, orders="NK", strategies="ours", single_head=False)
    job = plan.jobs["NK"]
    job.prior.parent.mkdir(parents=True, exist_ok=True)
    job.prior.write_bytes(b"prior")
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "last.pth.tar").write_bytes(b"state")
    calls = []

    def fake_main(default_order, description, argv):
        calls.append(argv)
        Path(job.out).write_bytes(b"final")
        return str(job.out)
    monkeypatch.setattr(study.lifelong, "main", fake_main)
    assert study.train_job(job, plan.s) == "resumed"
    assert calls and calls[0][-1] == "--resume"
    record = json.loads((job.run_dir / "study_job.json").read_text())
    assert record["status"] == "done" and record["resumed"] is True
    # now the checkpoint exists: it is reused, and other settings are refused
    assert study.reuse_check(job, plan.s) is True
    plan.s.epochs += 1
    with pytest.raises(SystemExit, match="other settings"):
        study.reuse_check(job, plan.s)


# ------------------------------------------------------------------------------- a quick study
@pytest.fixture(scope="module")
def quick_study(synthetic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    argv = ["--quick", "--data-root", str(synthetic_root), "--runs-dir", str(out / "runs"),
            "--report", str(out / "docs" / "RESULTS.md"), "--figures-dir", str(out / "docs" / "figures"),
            "--orders", ORDERS, "--strategies", STRATEGIES, "--scale", "0.25", "--quiet"]
    payload = study.main(argv)
    return out, argv, payload


def test_quick_study_writes_the_report(quick_study):
    out, _, payload = quick_study
    text = (out / "docs" / "RESULTS.md").read_text()
    assert "synthetic stand-ins, not NYU-v2 / KITTI / ScanNet numbers" in text
    for heading in ("## Summary", "## Setup", "## Do the single-domain models fit?",
                    "## Final error, forgetting and backward transfer", "## Forgetting curves",
                    "## Plasticity: the new domain right after learning it", "## Automatic domain selection",
                    "## One head for all domains? (single-head baseline)",
                    "## Qualitative: an old domain after the last stage",
                    "## Honest comparison: ours against finetune and single-domain training",
                    "## Domain x stage matrices", "### Order NKS", "### Order KNS"):
        assert heading in text, heading
    assert "Measured wall time of the study" in text
    assert "python3 study.py --quick" in text
    figures = out / "docs" / "figures"
    for name in ("fit", "summary", "forgetting", "selection", "single_head", "qualitative"):
        png = figures / f"study_{name}.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", name
        assert f"figures/study_{name}.png" in text
    # 3 single-domain models + 2 x 2 strategies x 2 later stages + joint + single head
    assert payload["counts"]["trained"] == 3 + 8 + 2
    assert payload["counts"]["missing"] == 0
    # full matrices for every order and strategy, and summaries computed from them
    for o in ORDERS.split(","):
        for st in STRATEGIES.split(","):
            m = payload["matrices"][f"{o}/{st}/rmse"]
            assert [len(r) for r in m] == [1, 2, 3]
            assert all(v is not None and math.isfinite(v) and v > 0 for r in m for v in r)
            assert payload["summaries"][f"{o}/{st}/rmse"]["forgetting"] is not None
    # the first stage is shared: the first column is the same for both strategies
    assert payload["matrices"]["NKS/ours/rmse"][0] == payload["matrices"]["NKS/finetune/rmse"][0]


def test_second_call_reuses_runs_and_evaluations(quick_study):
    out, argv, _ = quick_study
    runs = out / "runs"
    ckpts = sorted(runs.glob("*.pth.tar"))
    evals = sorted((runs / "eval").glob("*.json"))
    assert len(ckpts) == 13 and len(evals) >= 13
    before = {p: p.stat().st_mtime_ns for p in ckpts + evals}
    payload = study.main(argv)
    assert payload["counts"]["trained"] == 0 and payload["counts"]["resumed"] == 0
    assert payload["counts"]["reused"] == 13 and payload["counts"]["evaluated"] == 0
    assert {p: p.stat().st_mtime_ns for p in ckpts + evals} == before
    # --report-only rebuilds the report from disk as well
    study.main(argv + ["--report-only"])
    assert {p: p.stat().st_mtime_ns for p in ckpts + evals} == before
    assert "## Domain x stage matrices" in (out / "docs" / "RESULTS.md").read_text()


def test_other_settings_are_refused(quick_study):
    out, argv, _ = quick_study
    with pytest.raises(SystemExit, match="other settings"):
        study.main(argv + ["--seed", "1"])
