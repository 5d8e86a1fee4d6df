"""Final AbsRel per domain, average forgetting and selection accuracy of each reduced run."""
import json, os
print("| variant | AbsRel N / K / S after NKS | average AbsRel | average forgetting (AbsRel) | selection (lda) |")
print("|---|---|---:|---:|---:|")
for v in ["base", "reinit", "bn", "exhaust", "scannet", "spline", "authors"]:
    d = f"runs/proto_effects/{v}"
    if not os.path.exists(f"{d}/inference.json"):
        continue
    m = json.load(open(f"{d}/matrix.json"))["summary"]["abs_rel"]
    i = json.load(open(f"{d}/inference.json"))["selection"]
    print(f"| {v} | {' / '.join(f'{x:.3f}' for x in m['final'])} | {m['final_average']:.3f} | "
          f"{m['average_forgetting']:+.3f} | {i['overall_accuracy']:.3f} |")
