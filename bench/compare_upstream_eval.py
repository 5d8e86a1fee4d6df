"""Side-by-side table: upstream evaluation (upstream_eval.py) vs test.py --protocol authors."""
import json, sys
up = json.load(open(sys.argv[1])); ours = json.load(open(sys.argv[2]))["results"]
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
