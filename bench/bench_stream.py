"""Online head selection on a stream that moves between domains, and the stream path's frames/s.

    python bench/bench_stream.py                         # selection table -> runs/bench_stream.json
    python bench/bench_stream.py --throughput            # + frames/s of predict.py on videos at K and N sizes
    python bench/bench_stream.py --quick --checkpoint C --data-root D    # smoke run

**Selection.** A stream is made from the synthetic test sets: ``--segments`` (default NKSN) segments
of ``--segment-length`` frames, each frame a test image of that domain drawn at random (the stored
RGB files, as predict.py would read them), joined by ``--transition`` cross-faded frames (the first
half labelled with the old domain, the rest with the new one). ``--streams`` such streams are drawn
(seeds 0..n-1). Every distinct frame goes once through the stream path (``predict.Predictor.run``:
inference/frames.py's selection on the whole frame) and its distances are kept; each selection
rule (the per-frame rule, and :class:`stream.HeadSmoother` settings) is then replayed over the
distance sequence, which is exactly what ``stream.run_stream`` does with them (the distances do not
depend on the head chosen before). Reported per rule: frame accuracy, head switches against the
true number, switches to a head that is not the frame's true domain, and the delay (frames after a domain change until the chosen head is
the new domain's; "missed" if it never is within the segment). "calibrated switch" rules get the
checkpoint's out-of-domain thresholds (``HeadSmoother(thresholds=...)``, what predict.py uses where the
checkpoint stores them). The cycle condition: streams of one frame per domain in turn (N, K, S, N, ...).

**Throughput** (``--throughput``): ``--frames`` test frames of N and of K written as an mp4 each,
then ``predict.py VIDEO`` (default smoothing, video + log written; the K video also with
``--domain K``) with the reader/writer threads and with ``--no-threads``, interleaved, ``--rounds``
times; median frames/s (wall time of the whole
stream, model loading excluded) and median per-frame network latency.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import statistics
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from inference import stream as S  # noqa: E402
from inference import images as P  # noqa: E402
from base.domains import get_domain  # noqa: E402
from base.safeio import write_json  # noqa: E402
from cli import predict as predict_cli  # noqa: E402
from cli.errors import CLIError  # noqa: E402
from engine.processes import resolve_device  # noqa: E402
from inference.predictor import predictor_settings  # noqa: E402
from inference.frames import GATE_THRESHOLD, SelectionGate, to_tensor  # noqa: E402


RULES = [("per-frame (raw)", dict(mode="raw", window=1))] + \
    [(f"vote, window {w}", dict(mode="vote", window=w)) for w in (3, 5)] + \
    [(f"mean, window {w}", dict(mode="mean", window=w, margin=0.0)) for w in (2, 3, 4, 6)] + \
    [(f"mean, window {w}, margin 5 %", dict(mode="mean", window=w, margin=0.05)) for w in (3, 4, 6)] + \
    [(f"mean, window {w}, calibrated switch", dict(mode="mean", window=w, margin=0.0, calibrated=True))
     for w in (4, 6)]
CYCLE = "NKS"  # the cycle condition: one frame per domain in turn (issue 26, item 21)
CYCLE_FRAMES = 40


def test_files(root: Path, letter: str) -> list[Path]:
    spec = get_domain(letter)
    with open(root / spec.test_csv, newline="") as f:
        return [root / row[0] for row in csv.reader(f) if row]


def blend(a: Image.Image, b: Image.Image, t: float) -> Image.Image:
    """Cross-fade from a to b (t in 0..1) at a's size."""
    return Image.blend(a, b.resize(a.size, Image.BILINEAR), t)


def make_stream(files: dict, segments: str, length: int, transition: int, seed: int):
    """[(key, label index in segments' letters, PIL or None)]: key names a test file or a blend."""
    rng = np.random.default_rng(seed)
    frames = []
    picks = []
    for letter in segments:
        pool = files[letter]
        idx = rng.choice(len(pool), size=length, replace=length > len(pool))
        picks.append([pool[i] for i in idx])
    for s, letter in enumerate(segments):
        if s > 0:
            a, b = picks[s - 1][-1], picks[s][0]
            for k in range(1, transition + 1):
                t = k / (transition + 1)
                label = segments[s - 1] if t < 0.5 else letter
                frames.append(((str(a), str(b), round(t, 4)), label))
        frames.extend(((str(f),), letter) for f in picks[s])
    return frames


def frame_image(key) -> Image.Image:
    if len(key) == 1:
        return P.read_rgb(key[0])
    return blend(P.read_rgb(key[0]), P.read_rgb(key[1]), key[2])


def evaluate(heads, labels) -> dict:
    """Frame accuracy, switches (chosen, true), extra switches, delays after each true change."""
    heads, labels = list(heads), list(labels)
    acc = float(np.mean([h == y for h, y in zip(heads, labels)]))
    changes = [t for t in range(1, len(labels)) if labels[t] != labels[t - 1]]
    ends = changes[1:] + [len(labels)]
    delays = []
    for c, end in zip(changes, ends):
        hit = next((t - c for t in range(c, end) if heads[t] == labels[c]), None)
        delays.append(hit)
    switches = S.count_switches(heads)
    # a switch to a head that is not the true domain of that frame (a switch back to the right one
    # is the correction of an earlier error, not counted again)
    wrong = sum(1 for t in range(1, len(heads)) if heads[t] != heads[t - 1] and heads[t] != labels[t])
    return {"accuracy": acc, "switches": switches, "true_switches": len(changes),
            "wrong_switches": wrong, "delays": delays}


def smoother(opts, thresholds):
    """The HeadSmoother of a rule; "calibrated" rules get the checkpoint's out-of-domain thresholds."""
    kw = {k: v for k, v in opts.items() if k != "calibrated"}
    return S.HeadSmoother(**kw, thresholds=thresholds if opts.get("calibrated") else None)


def selection_benchmark(model, root, args, log=print) -> dict:
    files = {c: test_files(root, c) for c in dict.fromkeys(args.segments + CYCLE)}
    streams = [make_stream(files, args.segments, args.segment_length, args.transition, seed)
               for seed in range(args.streams)]
    cycles = [make_stream(files, (CYCLE * CYCLE_FRAMES)[:CYCLE_FRAMES], 1, 0, seed) for seed in range(args.streams)]
    cache = {}
    keys = list(dict.fromkeys(k for st in streams + cycles for k, _ in st))
    t0 = time.perf_counter()
    descriptors = {}
    for i, key in enumerate(keys):
        img = frame_image(key)
        r = model.run(img)
        cache[key] = (r["raw_head"], r["distances"].numpy())
        descriptors[key] = SelectionGate.descriptor(to_tensor(img))
        if (i + 1) % 50 == 0:
            log(f"  {i + 1}/{len(keys)} distinct frames through the stream path")
    log(f"  {len(keys)} distinct frames in {time.perf_counter() - t0:.0f} s")
    letters = model.letters
    thresholds = S.frame_thresholds(model)
    rows = rule_rows(streams, cache, letters, thresholds)
    raw_frame_acc = {c: float(np.mean([cache[(str(f),)][0] == letters.index(c) for f in files[c]
                                       if (str(f),) in cache])) for c in files}
    gated = {name: gated_caches(st, cache, descriptors, args.reselect) for name, st in
             (("rows", streams), ("cycle_rows", cycles))}
    return {"rows": rows, "cycle_rows": rule_rows(cycles, cache, letters, thresholds),
            "reselect": args.reselect,
            "rows_reselect": rule_rows(streams, None, letters, thresholds, gated["rows"]),
            "cycle_rows_reselect": rule_rows(cycles, None, letters, thresholds, gated["cycle_rows"]),
            "selections": {k: [sum(sel for *_, sel in g) for g in v] for k, v in gated.items()},
            "frames_per_stream": len(streams[0]), "distinct_frames": len(keys),
            "calibrated": thresholds is not None, "raw_accuracy_per_domain_drawn": raw_frame_acc}


def gated_caches(streams, cache, descriptors, threshold) -> list:
    """Per stream, per frame (raw head, distances, whether the selection ran) as predict.py's
    ``--reselect threshold`` gives them (``inference.frames.SelectionGate``: the last selection's
    result reused while the frame's descriptor stays within the threshold)."""
    out = []
    for st in streams:
        gate, seq = SelectionGate(threshold) if threshold > 0 else None, []
        for key, _ in st:
            if gate is None:
                seq.append(cache[key] + (True,))
                continue
            sel, ran = gate(descriptors[key], lambda _x, key=key: {"raw": cache[key]}, descriptor=descriptors[key])
            seq.append(sel["raw"] + (ran,))
        out.append(seq)
    return out


def rule_rows(streams, cache, letters, thresholds, gated=None) -> list:
    """Every rule of RULES replayed over the streams' cached distances (``gated``: per stream the
    sequence :func:`gated_caches` gives, instead of each frame's own)."""
    rows = []
    for name, opts in RULES:
        if opts.get("calibrated") and thresholds is None:
            continue
        per_stream = []
        for k, st in enumerate(streams):
            sm = smoother(opts, thresholds)
            seq = [cache[key] for key, _ in st] if gated is None else [g[:2] for g in gated[k]]
            heads = [sm(*item) for item in seq]
            per_stream.append(evaluate(heads, [letters.index(y) for _, y in st]))
        delays = [d for ev in per_stream for d in ev["delays"]]
        found = [d for d in delays if d is not None]
        rows.append({"rule": name, "options": opts,
                     "accuracy": float(np.mean([ev["accuracy"] for ev in per_stream])),
                     "switches": sum(ev["switches"] for ev in per_stream),
                     "true_switches": sum(ev["true_switches"] for ev in per_stream),
                     "wrong_switches": sum(ev["wrong_switches"] for ev in per_stream),
                     "streams_with_wrong": sum(ev["wrong_switches"] > 0 for ev in per_stream),
                     "mean_delay": float(np.mean(found)) if found else None,
                     "max_delay": max(found) if found else None,
                     "missed": sum(d is None for d in delays),
                     "per_stream": per_stream})
    return rows


def selection_table(result, default_opts, key="rows") -> str:
    lines = ["| rule | frame accuracy | switches (true) | switches to a wrong head (streams with any) | "
             "delay mean / max (frames) | missed changes |", "|---|---:|---:|---:|---:|---:|"]
    for r in result[key]:
        star = " **(default)**" if r["options"] == default_opts else ""
        md = "-" if r["mean_delay"] is None else f"{r['mean_delay']:.2f} / {r['max_delay']}"
        lines.append(f"| {r['rule']}{star} | {100 * r['accuracy']:.1f} % | {r['switches']} ({r['true_switches']}) | "
                     f"{r['wrong_switches']} ({r['streams_with_wrong']}) | {md} | {r['missed']} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Throughput
# ------------------------------------------------------------------------------------------------
def write_video(path, files, n, fps=10):
    import imageio.v2 as iio
    w = iio.get_writer(str(path), format="FFMPEG", fps=fps, codec="libx264", pixelformat="yuv420p",
                       macro_block_size=1, ffmpeg_log_level="error")
    size = None
    for i in range(n):
        img = P.read_rgb(files[i % len(files)])
        size = size or (img.size[0] - img.size[0] % 2, img.size[1] - img.size[1] % 2)
        w.append_data(np.asarray(img.resize(size, Image.BILINEAR)))
    w.close()
    return size


# (video domain, --domain or None): the default automatic choice on both videos, and the K video with
# the K head forced (on the quickstart model the automatic choice rarely picks K for these frames,
# so only the forced run measures the network at K's input size)
THROUGHPUT_CASES = (("N", None), ("K", None), ("K", "K"))
# predict.py's options of each variant: the default (the fitted pass), the tiles (the default until
# the fitted pass), the rule before issue 35 (tiles, selection on every frame), the windowed pass
VARIANTS = {"now": (), "tiled": ("--frame-rule", "tiled"), "before": ("--frame-rule", "tiled", "--reselect", "0"),
            "windowed": ("--frame-rule", "windowed"), "one-at-once": ("--frames-at-once", "1")}


def throughput_benchmark(args, root, work: Path, log=print) -> list[dict]:
    videos = {}
    for letter in ("N", "K"):
        videos[letter] = (work / f"stream_{letter}.mp4",
                          write_video(work / f"stream_{letter}.mp4", test_files(root, letter), args.frames))
    # (letter, forced, threads, rule): "before" = the rule before issue 35 (tiles, selection on
    # every frame), with the reader/writer threads, in the same rounds
    chosen = [v for v in VARIANTS if v in args.variants.split(",")]
    runs = {(c, forced, True, rule): [] for c, forced in THROUGHPUT_CASES for rule in chosen}
    for _ in range(args.rounds):
        for letter, forced, threads, rule in runs:
            video = videos[letter][0]
            out = work / f"out_{letter}_{forced or 'auto'}_{int(threads)}_{rule}"
            argv = [str(video), "--checkpoint", str(args.checkpoint), "--out", str(out), "--quiet"]
            argv += ([] if threads else ["--no-threads"]) + ([] if forced is None else ["--domain", forced])
            argv += list(VARIANTS[rule])
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                predict_cli.main(argv)
            runs[(letter, forced, threads, rule)].append(json.loads((out / f"{video.stem}_stream.json").read_text()))
    rows = []
    for (letter, forced, threads, rule), items in runs.items():
        heads = {k: v for k, v in items[0]["frames_per_head"].items() if v}
        rows.append({"domain": letter, "forced": forced, "frame_size": list(videos[letter][1]),
                     "threads": threads, "rule": rule, "frames": items[0]["frames"], "heads": heads,
                     "frames_per_s_all": [s["frames_per_s"] for s in items],
                     "selections": items[0].get("selections"),
                     "frames_per_s": statistics.median(s["frames_per_s"] for s in items),
                     "median_latency_ms": statistics.median(s["median_latency_ms"] for s in items),
                     "rounds": len(items)})
        log(f"  {letter} domain={forced} threads={threads} {rule}: {rows[-1]['frames_per_s']:.2f} frames/s")
    for r in rows:  # the ratio to the rule before, per round (interleaved), where both ran
        before = next((b for b in rows if b["rule"] == "before" and (b["domain"], b["forced"]) ==
                       (r["domain"], r["forced"])), None)
        if r["rule"] != "before" and before is not None:
            ratios = [a / b for a, b in zip(r["frames_per_s_all"], before["frames_per_s_all"])]
            r["speedup_over_before"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    return rows


def throughput_table(rows, model) -> str:
    fmt = lambda s: f"{s[0]}x{s[1]}"  # noqa: E731
    lines = ["| frames (synthetic) | head | rule | heads used (frames) | reader/writer threads | frames/s | "
             "median per-frame latency | frames/s over before's (median, min-max of rounds) |",
             "|---|---|---|---|---|---:|---:|---|"]
    for r in rows:
        w, h = r["frame_size"]
        if r["forced"] is None:
            how = f"automatic (selection at {fmt(model.sizes[0])}), smoothed"
        else:
            how = f"`--domain {r['forced']}` ({fmt(model.sizes[model.letters.index(r['forced'])])})"
        used = ", ".join(f"{name} {n}" for name, n in r["heads"].items())
        sp = r.get("speedup_over_before")
        sp = "" if sp is None else f"{sp['median']:.2f}x ({sp['min']:.2f}-{sp['max']:.2f})"
        rule = "default" if r["rule"] == "now" else f"{r['rule']} (`" + " ".join(VARIANTS[r["rule"]]) + "`)"
        lines.append(f"| {r['domain']}-like, {w}x{h} | {how} | {rule} | {used} | {'yes' if r['threads'] else 'no'} | "
                     f"{r['frames_per_s']:.1f} | {r['median_latency_ms']:.0f} ms | {sp} |")
    return "\n".join(lines)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def build_parser():
    p = argparse.ArgumentParser(description="Online head selection on a stream between domains (raw vs "
                                            "smoothed), and the stream path's frames/s.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default="runs/quickstart/NKS.pth.tar", help="a project checkpoint with prototypes")
    p.add_argument("--data-root", default="datasets/synthetic", help="synthetic data root (its test sets)")
    p.add_argument("--segments", default="NKSN", help="domain letters of the stream's segments, in order")
    p.add_argument("--segment-length", type=int, default=30, help="frames per segment")
    p.add_argument("--transition", type=int, default=2, help="cross-faded frames between segments")
    p.add_argument("--streams", type=int, default=5, help="streams drawn (seeds 0..n-1)")
    p.add_argument("--throughput", action="store_true", help="also measure frames/s of predict.py on videos "
                   "(the default fitted pass, the tiles, the rule before and the windowed pass, interleaved)")
    p.add_argument("--reselect", type=float, default=GATE_THRESHOLD,
                   help="predict.py's --reselect replayed on the streams (the selection tables with it)")
    p.add_argument("--frames", type=int, default=40, help="frames per throughput video")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the throughput runs")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated throughput variants: " + "; ".join(
                       f"{k}: {' '.join(v) or 'the defaults'}" for k, v in VARIANTS.items()))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--work", default="runs/bench_stream", help="folder for the throughput videos and outputs")
    p.add_argument("--out", default="runs/bench_stream.json", help="JSON result")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 streams of 6-frame segments, 1 round of 6 frames")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.segment_length, args.streams, args.frames, args.rounds = 6, 2, 6, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.data_root)
    model = P.Predictor(args.checkpoint, P.ImageOptions(quiet=True), device=resolve_device("auto"))
    bad = [c for c in args.segments if c not in model.letters]
    if bad:
        raise CLIError(f"--segments {args.segments}: {''.join(bad)} not learned by {args.checkpoint} "
                         f"({model.letters})")
    default_opts = dict(mode="mean", window=S.DEFAULT_WINDOW, margin=S.DEFAULT_MARGIN)
    if S.frame_thresholds(model) is not None:  # predict.py calibrates its smoother where it can
        default_opts["calibrated"] = True
    print(f"selection: {args.streams} stream(s) {args.segments}, {args.segment_length} frames per segment, "
          f"{args.transition} transition frames", file=sys.stderr)
    sel = selection_benchmark(model, root, args, log=lambda m: print(m, file=sys.stderr))
    result = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "checkpoint": str(args.checkpoint),
              "predictor": predictor_settings(model.predictor),
              "settings": {k: getattr(args, k) for k in ("segments", "segment_length", "transition", "streams")},
              "selection": sel}
    print(f"\nSelection on {args.streams} synthetic stream(s) {'->'.join(args.segments)}, "
          f"{sel['frames_per_stream']} frames each ({args.segment_length} per segment, {args.transition} "
          f"transition frames), {args.checkpoint}:\n")
    print(selection_table(sel, default_opts))
    print(f"\nThe cycle condition: {args.streams} stream(s) of {CYCLE_FRAMES} frames, one per domain in "
          f"turn ({CYCLE}, {CYCLE}, ...; every frame is a true change):\n")
    print(selection_table(sel, default_opts, "cycle_rows"))
    if args.reselect > 0:
        sel_n = sel["selections"]
        print(f"\nWith `--reselect {args.reselect:g}` (the selection reused while the frame's descriptor moved less; "
              f"selections run: streams {sum(sel_n['rows'])} of {args.streams * sel['frames_per_stream']} frames, "
              f"cycles {sum(sel_n['cycle_rows'])} of {args.streams * CYCLE_FRAMES}):\n")
        print(selection_table(sel, default_opts, "rows_reselect"))
        print()
        print(selection_table(sel, default_opts, "cycle_rows_reselect"))
    if args.throughput:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        print("\nthroughput:", file=sys.stderr)
        rows = throughput_benchmark(args, root, work, log=lambda m: print(m, file=sys.stderr))
        result["throughput"] = rows
        print(f"\nThroughput of predict.py VIDEO ({cpu_name()}, {torch.get_num_threads()} torch threads, "
              f"median of {args.rounds} interleaved round(s)):\n")
        print(throughput_table(rows, model))
    write_json(args.out, result)
    print(f"\n-> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
