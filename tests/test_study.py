"""The study package: intervals and comparisons, the plan of runs (presets, arms, resumption), and
a smoke study end to end on a custom domain (reuse, --report-only, refused settings)."""
from __future__ import annotations

import json
import math

import pytest
from scipy import stats as scipy_stats

from base import domains
from data import synthetic
from base.errors import InputError
from cli import study as cli
from study import run, stats
from study.plan import Plan


# ------------------------------------------------------------------------------- statistics
def test_interval_is_the_student_t_interval():
    values = [0.30, 0.34, 0.29, 0.35]
    iv = stats.interval(values)
    mean = sum(values) / 4
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    half = scipy_stats.t.ppf(0.975, 3) * sd / 2
    assert iv.mean == pytest.approx(mean) and iv.lo == pytest.approx(mean - half)
    assert iv.hi == pytest.approx(mean + half) and iv.n == 4
    one = stats.interval([0.5, None, float("nan")])
    assert one.n == 1 and one.lo is None and "(n=1)" in one.text()
    assert stats.interval([None]) is None


def test_paired_comparison_claims_only_what_the_interval_shows():
    # the same seed-to-seed swing in both arms, a constant gap: the paired difference is clear
    a = {0: 0.10, 1: 0.30, 2: 0.20}
    b = {0: 0.15, 1: 0.36, 2: 0.24}
    c = stats.compare(a, b)
    assert c.verdict == "lower" and c.diff.hi < 0
    assert "ours is lower than finetune" in c.sentence("ours", "finetune", "forgetting")
    # unpaired intervals overlap although the paired difference is clear
    assert stats.overlap(c.a, c.b) is True
    # differences of both signs: no claim
    d = stats.compare({0: 0.1, 1: 0.3, 2: 0.2}, {0: 0.12, 1: 0.27, 2: 0.21})
    assert d.verdict == "not distinguishable"
    assert "not distinguishable at 95 %" in d.sentence("a", "b", "x")
    assert stats.compare({0: 0.1}, {1: 0.2}) is None


def test_wilson_interval():
    p, lo, hi = stats.proportion_interval(8, 8)
    assert p == 1.0 and hi == 1.0 and lo == pytest.approx(0.6756, abs=1e-4)   # textbook value
    p, lo, hi = stats.proportion_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)


# ------------------------------------------------------------------------------- the plan
def settings(*argv):
    return cli.settings_of(cli.build_parser().parse_args(list(argv)))


def test_full_plan_chains_every_stage_to_its_prior(tmp_path):
    s = settings("--runs-dir", str(tmp_path))
    plan = Plan(s)
    jobs = plan.jobs.values()
    assert len(s.seeds) >= 3 and set(s.orders) == {"NKS", "KSN", "SNK"}
    firsts = [j for j in jobs if j.group == "first"]
    # every domain's single-domain model per seed, plus the authors' own first stage of N
    assert sorted((j.seed, j.letters, j.arm) for j in firsts if j.arm) == [(sd, "N", "authors") for sd in s.seeds]
    assert len(firsts) == len(s.seeds) * 4
    seen = set()
    for job in plan.ordered():
        assert job.prior is None or job.prior in seen, job.key
        seen.add(job.out)
    # arms sharing the engine strategy "ours" live in their own folders; priors stay in the arm
    assert plan.stage("NKS", 3, "reinit", 1) == tmp_path / "seed1" / "reinit" / "NKS.pth.tar"
    assert plan.jobs[str(plan.stage("NKS", 2, "reinit", 1))].prior == tmp_path / "seed1" / "first" / "N.pth.tar"
    assert plan.jobs[str(plan.stage("NKS", 2, "authors", 1))].prior == tmp_path / "seed1" / "authors" / "N.pth.tar"
    argv = plan.jobs[str(plan.stage("NKS", 3, "exhaust", 2))].argv(s)
    assert argv[-2:] == ["--replay-exhaust", "authors"] and argv[argv.index("--seed") + 1] == "2"
    assert argv[argv.index("--epochs") + 1] == str(s.epochs)
    joint = plan.jobs[str(plan.joint(0, shared_head=True))].argv(s)
    assert "--shared-head" in joint and joint[joint.index("--epochs") + 1] == str(s.joint_epochs)


def test_quick_is_a_subset_of_the_full_study(tmp_path):
    """Every --quick stage is a stage of the full study with the same arguments, so a full study
    after a quick one trains only what is missing."""
    full = Plan(settings("--runs-dir", str(tmp_path)))
    quick = Plan(settings("--quick", "--runs-dir", str(tmp_path)))
    assert 0 < len(quick.jobs) < len(full.jobs)
    for key, job in quick.jobs.items():
        assert job.argv(quick.s) == full.jobs[key].argv(full.s)


def test_custom_domain_letters_are_orders(tmp_path, clean_registry):
    (tmp_path / "domains.json").write_text(json.dumps([{"name": "office", "letter": "X",
                                                        "transform": "scannet", "max_depth": 10.0}]))
    s = settings("--data-root", str(tmp_path), "--orders", "NX,XN", "--protocol-arms", "",
                 "--runs-dir", str(tmp_path / "runs"))
    assert s.orders == ("NX", "XN") and s.letters == "NX"
    assert sorted(j.letters for j in Plan(s).jobs.values() if j.group == "first" and j.seed == 0) == ["N", "X"]
    with pytest.raises(SystemExit, match="--orders"):
        settings("--orders", "NQ")


def test_bad_options_are_one_error_line(tmp_path):
    for argv, match in ((["--seeds", "0,0"], "distinct"), (["--seeds", "a"], "integers"),
                        (["--arms", "authors"], "unknown 'authors'"), (["--lr", "0"], "--lr"),
                        (["--orders", "N"], "at least two")):
        with pytest.raises(SystemExit, match=match):
            settings(*argv)
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device"):
            settings("--preset", "cuda")


def test_cuda_preset_is_the_papers_schedule(tmp_path, monkeypatch):
    """Argument handling only (no GPU here): the stages get the paper's input size, encoder and
    schedule on CUDA, one process at a time."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    s = settings("--preset", "cuda", "--runs-dir", str(tmp_path))
    assert (s.device, s.jobs, s.scale, s.encoder, s.replay_size) == ("cuda", 1, 1.0, "resnet34", 500)
    argv = Plan(s).jobs[str(tmp_path / "seed0" / "ours" / "NK.pth.tar")].argv(s)
    value = lambda flag: argv[argv.index(flag) + 1]  # noqa: E731
    assert (value("--device"), value("--epochs"), value("--scale"), value("--encoder")) == \
        ("cuda", "20", "1", "resnet34")
    assert s.data_root == "datasets/study_s100" and "--lr" in argv and value("--lr") == "0.0001"


def test_interrupted_stage_is_resumed(tmp_path, monkeypatch):
    """A run folder with last.pth.tar but no checkpoint: the engine is called with --resume; then
    the checkpoint is reused, and other settings are refused."""
    s = settings("--quick", "--runs-dir", str(tmp_path))
    plan = Plan(s)
    job = plan.jobs[str(plan.stage("NKS", 2, "ours", 0))]
    job.prior.parent.mkdir(parents=True)
    job.prior.write_bytes(b"prior")
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "last.pth.tar").write_bytes(b"state")
    calls = []

    def fake_train_stage(options):
        calls.append(options)
        job.out.write_bytes(b"final")
        return job.out
    monkeypatch.setattr(run, "train_stage", fake_train_stage)
    assert run.train(job, s) == "resumed"
    assert calls[0].resume == "auto"
    record = json.loads((job.run_dir / "study_job.json").read_text())
    assert record["status"] == "done" and record["resumed"] is True
    assert run.reuse(job, s) is True
    s.epochs += 1
    with pytest.raises(InputError, match="other settings"):
        run.reuse(job, s)


# ------------------------------------------------------------------------------- a smoke study
@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    """The smoke preset on N and a custom domain X (ScanNet-like files under another name)."""
    out = tmp_path_factory.mktemp("study")
    data = out / "data"
    synthetic.generate(str(data), 12, 3, 0, 1, 4, "NS", 0.25, progress=False)
    (data / "domains.json").write_text(json.dumps([{
        "name": "office", "letter": "X", "train_csv": "scannet_train.csv", "test_csv": "scannet_test.csv",
        "replay_csv": "replay_scannet.csv", "max_depth": 10.0, "source": "scannet", "transform": "scannet",
        "resize": [240, 320], "rgb_to_depth_size": True}]))
    argv = ["--preset", "smoke", "--data-root", str(data), "--runs-dir", str(out / "runs"),
            "--orders", "NX", "--protocol-orders", "NX", "--report", str(out / "docs" / "RESULTS.md"),
            "--figures-dir", str(out / "docs" / "figures"), "--jobs", "1", "--quiet"]
    try:
        result = cli.main(argv)
        yield out, argv, result
    finally:
        domains.unregister_domain("X")


def test_smoke_study_writes_every_section(smoke_study):
    out, _, result = smoke_study
    text = (out / "docs" / "RESULTS.md").read_text()
    assert "synthetic stand-ins, not NYU-v2 / KITTI / ScanNet numbers" in text
    assert "python3 study.py --preset smoke" in text
    for heading in ("## Targets", "## Setup", "## Do the single-domain models fit their domain?",
                    "## Stability", "## Plasticity", "## Protocol", "## Head selection",
                    "## One shared head", "## Appendix", "## Compute"):
        assert heading in text, heading
    assert "office (X)" in text                      # the custom domain is reported by name
    for name in ("fit", "stability", "protocol", "selection"):
        png = out / "docs" / "figures" / f"study_{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and f"figures/study_{name}.png" in text
    # 2 seeds x (2 firsts + ours, finetune and reinit stages + joint + single head)
    assert result["counts"]["trained"] == 14 and result["missing"] == 0
    targets = {t[0]: t for t in result["targets"]}
    assert any("single-head" in k for k in targets) and any("forgetting" in k for k in targets)
    # every number of a comparison sentence has its interval beside it
    for line in text.splitlines():
        if line.startswith("- ") and ("not distinguishable" in line or "(95 % interval excludes 0)" in line):
            assert "paired difference" in line and "[" in line, line


def test_smoke_study_numbers_come_from_the_evaluations(smoke_study):
    out, argv, _ = smoke_study
    s = cli.settings_of(cli.build_parser().parse_args(argv))
    from study.results import Results
    res = Results(Plan(s))
    m = res.matrix("NX", "ours", 0, "abs_rel")
    assert [len(r) for r in m] == [1, 2] and all(0 < v < 5 for r in m for v in r)
    ev = json.loads((out / "runs" / "eval" / "seed0__ours__NX.test.json").read_text())
    assert m[1][1] == ev["results"]["X"]["prior"]["abs_rel"]
    summary = res.summary("NX", "ours", 0, "abs_rel")
    assert summary["average_forgetting"] == pytest.approx(m[1][0] - m[0][0])
    # the first stage is shared: the first column is the same for ours and finetune
    assert res.matrix("NX", "finetune", 0, "abs_rel")[0] == m[0]


def test_second_call_reuses_and_report_only_is_identical(smoke_study):
    out, argv, _ = smoke_study
    runs = out / "runs"
    files = sorted(runs.rglob("*.pth.tar")) + sorted((runs / "eval").glob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in files}
    result = cli.main(argv)
    assert result["counts"]["trained"] == 0 and result["counts"]["reused"] == 14
    assert {p: p.stat().st_mtime_ns for p in files} == before
    text = (out / "docs" / "RESULTS.md").read_text()
    cli.main(argv + ["--report-only"])
    assert (out / "docs" / "RESULTS.md").read_text() == text
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_other_settings_are_refused(smoke_study):
    _, argv, _ = smoke_study
    with pytest.raises(SystemExit, match="other settings"):
        cli.main(argv + ["--lr", "1e-3"])
