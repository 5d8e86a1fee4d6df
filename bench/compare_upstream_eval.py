"""Side-by-side table: upstream evaluation (upstream_eval.py) vs test.py --protocol authors."""
import argparse
import json

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("upstream_json", help="what bench/upstream_eval.py wrote (the authors' evaluation)")
parser.add_argument("ours_json", help="what `test.py --protocol authors --json FILE` wrote (its 'results')")
cli = parser.parse_args()
with open(cli.upstream_json) as f:
    up = json.load(f)
with open(cli.ours_json) as f:
    ours = json.load(f)["results"]
keys = [("ABS_REL", "abs_rel"), ("RMSE", "rmse"), ("MAE", "mae"), ("LG10", "log10"),
        ("DELTA1", "delta1"), ("DELTA2", "delta2"), ("DELTA3", "delta3")]
print("| domain | metric | upstream test.py | ours `--protocol authors` | relative difference |")
print("|---|---|---:|---:|---:|")
worst = 0.0
for c in "NKS":
    for uk, ok in keys:
        u, o = up[c][uk], ours[c][ok]
        rel = abs(u - o) / max(abs(u), 1e-12)
        worst = max(worst, rel)
        print(f"| {c} | {ok} | {u:.6f} | {o:.6f} | {rel:.1e} |")
print(f"\nlargest relative difference {worst:.1e}")
