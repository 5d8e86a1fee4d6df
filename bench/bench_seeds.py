"""The quickstart over several seeds in each training precision: the table that decides a default.

    python bench/bench_seeds.py --seeds 0,1,2 --precisions fp32,bf16 --data-root datasets/synthetic
    python bench/bench_seeds.py --summarize-only --out runs/seeds      # the table of finished runs

Each cell (precision, seed) is one ``quickstart.py --seed S --precision P`` into ``--out/<P>_s<S>`` on the
same synthetic data (the seed moves the weights' initialisation, the data order and the
augmentation, not the data: a data root that fits is reused), run one after the other so that the
wall times are comparable; a cell whose ``report.json`` exists is not run again. Then, per cell:
the final model's AbsRel / RMSE / delta1 per domain (domain prior), the average forgetting, head
selection on the test crops (the quickstart's nearest prototype) and on **whole frames** as they
lie on disk (``inference.images.Predictor.run``, what predict.py runs: automatic head, the frame
statistics stored at the stage's end), in-domain frames called out of domain, the coverage of the
calibrated 90 % and 50 % intervals, and the quickstart's wall and CPU time.

The decision rule (issue 38): a candidate precision may become a CPU kind's default where, on every
figure, its mean over seeds lies within float32's seed-to-seed range (min..max), and its selection
is >= 99 % on every seed (or no worse than float32's where float32 itself misses 99 %). Printed
twice: strictly (a mean better than every float32 seed fails too) and one-sided (only a mean worse
than float32's worst seed fails; coverage counts as its distance to the nominal level).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TRAINING_PRECISIONS = ("fp32", "bf16", "fp16")  # quickstart.py --precision (auto aside)
LETTERS = "NKS"
# the per-cell figures the rule compares
FIGURES = ([f"{m} {c}" for m in ("abs_rel", "rmse", "delta1") for c in LETTERS] + ["forgetting abs_rel"]
           + [f"coverage{q} {c}" for q in (90, 50) for c in LETTERS])


def run_cell(precision: str, seed: int, args, log) -> Path:
    out = Path(args.out) / f"{precision}_s{seed}"
    if (out / "report.json").is_file():
        return out
    cmd = [sys.executable, str(ROOT / "quickstart.py"), "--data-root", args.data_root, "--out", str(out),
           "--seed", str(seed), "--precision", precision]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    log(f"{time.strftime('%H:%M:%S')} {' '.join(cmd)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.log", "w") as fh:
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)
    return out


def whole_frames(checkpoint: Path, data_root: Path, frames: int) -> dict:
    """Head choice and out-of-domain verdicts on the first ``frames`` test files per domain as on
    disk, through predict.py's path (automatic head, depth not needed beyond what selection runs)."""
    from inference import images as P
    from loaders import get_dataset
    model = P.Predictor(str(checkpoint), P.ImageOptions(quiet=True), device="cpu")
    right, flagged, total = {}, 0, 0
    for d, letter in enumerate(model.letters):
        rows = get_dataset(letter, "test", str(data_root), train=False).rows[:frames]
        hits = 0
        for row in rows:
            r = model.run(P.read_rgb(Path(row.image)), camera=model.camera_of(Path(row.image)))
            hits += int(r["head"] == d)
            flagged += int(bool(r["ood"]))
        right[letter] = [hits, len(rows)]
        total += len(rows)
    return {"right_head": right, "flagged": flagged, "frames": total}


def cell_figures(out: Path, data_root: Path, frames: int) -> dict:
    """The figures of one finished cell (cached in ``<cell>/seed_figures.json``)."""
    cache = out / "seed_figures.json"
    report = json.loads((out / "report.json").read_text())
    if cache.is_file() and cache.stat().st_mtime >= (out / "report.json").stat().st_mtime:
        return json.loads(cache.read_text())
    s = report["summary"]
    u = report["uncertainty_matrix"]
    fig = {f"{m} {c}": s[m]["final"][i] for m in ("abs_rel", "rmse", "delta1") for i, c in enumerate(LETTERS)}
    fig["forgetting abs_rel"] = s["abs_rel"]["average_forgetting"]
    for i, c in enumerate(LETTERS):
        fig[f"coverage90 {c}"] = u["coverage90_calibrated"][-1][i]
        fig[f"coverage50 {c}"] = u["coverage50_calibrated"][-1][i]
    fig["selection crops"] = report["selection_overall"]
    wf = whole_frames(out / "NKS.pth.tar", data_root, frames)
    fig["selection frames"] = sum(h for h, _ in wf["right_head"].values()) / wf["frames"]
    fig["frames right"] = wf["right_head"]
    fig["in-domain flagged"] = wf["flagged"]
    t = report["timings"]
    fig["wall s"], fig["cpu s"] = t["total"]["wall_s"], t["total"]["cpu_s"]
    fig["train wall s"] = sum(v["wall_s"] for k, v in t["steps"].items() if k.startswith("train"))
    fig["load start/end"] = [report["load_average_start"][0], report["load_average_end"][0]]
    fig["precision"], fig["cpu"] = report["training_precision"], report["cpu"]
    cache.write_text(json.dumps(fig, indent=1))
    return fig


def badness(name: str, value: float) -> float:
    """A figure turned so that lower is better: errors and forgetting as they are, delta1 negated,
    an interval's coverage as its distance to the nominal level."""
    if name.startswith("delta1"):
        return -value
    if name.startswith("coverage"):
        return abs(value - int(name.split()[0][len("coverage"):]) / 100)
    return value


def verdict(cells: dict, candidate: str, base: str = "fp32", one_sided: bool = False) -> list[str]:
    """Why ``candidate`` may not be the default (empty: it may): the rule of the module docstring.
    ``one_sided``: a mean better than every ``base`` seed passes too (only "worse than float32's
    worst seed" fails); the strict rule (False) asks the mean to lie inside the range."""
    if base not in cells or candidate not in cells:
        return [f"no runs of {base} or {candidate}"]
    why = []
    for name in FIGURES:
        ref = [f[name] for f in cells[base].values()]
        mean = statistics.mean(f[name] for f in cells[candidate].values())
        if one_sided:
            worst = max(badness(name, v) for v in ref)
            if badness(name, mean) > worst + 1e-9:
                why.append(f"{name}: mean {mean:.4f} worse than {base}'s worst seed ({min(ref):.4f}..{max(ref):.4f})")
        elif not min(ref) - 1e-9 <= mean <= max(ref) + 1e-9:
            why.append(f"{name}: mean {mean:.4f} outside {base}'s {min(ref):.4f}..{max(ref):.4f}")
    bar = min(0.99, min(f["selection frames"] for f in cells[base].values()),
              min(f["selection crops"] for f in cells[base].values()))
    for seed, f in cells[candidate].items():
        for kind in ("selection crops", "selection frames"):
            if f[kind] < bar - 1e-9:
                why.append(f"seed {seed}: {kind} {f[kind]:.3f} < {bar:.3f}")
    return why


def table(cells: dict) -> str:
    names = FIGURES + [
        "selection crops", "selection frames", "in-domain flagged", "wall s", "train wall s", "cpu s"]
    cols = [(p, s) for p in cells for s in sorted(cells[p])]
    head = "| figure | " + " | ".join(f"{p} s{s}" for p, s in cols) + " | " + " | ".join(
        f"{p} mean (min-max)" for p in cells) + " |"
    lines = [head, "|---|" + "---:|" * (len(cols) + len(cells))]
    for n in names:
        vals = [cells[p][s][n] for p, s in cols]
        agg = []
        for p in cells:
            v = [cells[p][s][n] for s in sorted(cells[p])]
            agg.append(f"{statistics.mean(v):.4g} ({min(v):.4g}-{max(v):.4g})")
        lines.append(f"| {n} | " + " | ".join(f"{v:.4g}" for v in vals) + " | " + " | ".join(agg) + " |")
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated")
    p.add_argument("--precisions", default="fp32,bf16", help="training precisions to compare (fp32, bf16, fp16)")
    p.add_argument("--data-root", default="datasets/synthetic",
                   help="the quickstart's synthetic data (generated by the first cell if missing)")
    p.add_argument("--out", default="runs/seeds", help="one quickstart folder per cell, and seeds.json")
    p.add_argument("--threads", type=int, default=None, help="torch threads of each quickstart (default: its own)")
    p.add_argument("--frames", type=int, default=40, help="whole test frames per domain for the selection")
    p.add_argument("--summarize-only", action="store_true", help="only tabulate the cells already finished")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    bad = [p for p in precisions if p not in TRAINING_PRECISIONS]
    if bad:
        raise SystemExit(f"error: --precisions: unknown {bad}; choose from {sorted(TRAINING_PRECISIONS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    cells = {}
    for seed in seeds:  # seed-major, so that a stopped run leaves every precision with as many seeds
        for prec in precisions:
            out = Path(args.out) / f"{prec}_s{seed}"
            if not args.summarize_only:
                run_cell(prec, seed, args, log)
            if (out / "report.json").is_file():
                log(f"{out}: figures")
                cells.setdefault(prec, {})[seed] = cell_figures(out, Path(args.data_root), args.frames)
    if not cells:
        raise SystemExit(f"error: no finished runs under {args.out}")
    cpu = next(iter(next(iter(cells.values())).values()))["cpu"]
    print(f"Quickstart seeds x training precision ({cpu}; synthetic data):\n")
    print(table(cells))
    result = {"cells": {p: {str(s): f for s, f in v.items()} for p, v in cells.items()}, "decisions": {}}
    for cand in precisions:
        if cand != "fp32":
            for rule, one_sided in (("strict (mean inside fp32's range)", False),
                                    ("one-sided (mean no worse than fp32's worst seed)", True)):
                why = verdict(cells, cand, one_sided=one_sided)
                result["decisions"].setdefault(cand, {})[rule] = why
                print(f"\n{cand} as the default, {rule}: " + ("meets the rule" if not why else "fails: " + "; ".join(why)))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "seeds.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
