"""Final AbsRel per domain, average forgetting and selection accuracy of each reduced run of
bench/protocol_effects.sh (a Markdown table on stdout; variants without results are left out)."""
import argparse
import json
import os

_parser = argparse.ArgumentParser(description=__doc__)
_parser.add_argument("--runs", default="runs/proto_effects",
                     help="the folder holding one run folder per variant (default runs/proto_effects)")
_runs = _parser.parse_args().runs
print("| variant | AbsRel N / K / S after NKS | average AbsRel | average forgetting (AbsRel) | selection (lda) |")
print("|---|---|---:|---:|---:|")
for v in ["base", "reinit", "bn", "exhaust", "scannet", "spline", "authors"]:
    d = os.path.join(_runs, v)
    if not os.path.exists(f"{d}/inference.json"):
        continue
    m = json.load(open(f"{d}/matrix.json"))["summary"]["abs_rel"]
    i = json.load(open(f"{d}/inference.json"))["selection"]
    print(f"| {v} | {' / '.join(f'{x:.3f}' for x in m['final'])} | {m['final_average']:.3f} | "
          f"{m['average_forgetting']:+.3f} | {i['overall_accuracy']:.3f} |")
