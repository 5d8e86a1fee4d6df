"""predict.py's stream path: a video file, or a folder of frames with ``--stream`` (inference/stream.py
does the work; this module holds its options and how a stopped stream ends the command).

A stream stopped half way keeps the log of the frames done and ends in one ``error:`` line saying
how far it got (exit status 1), or for Ctrl-C in an ``interrupted:`` line and exit status 130,
without a traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from cli.errors import CLIError, error_line
from cli.options import parse_interval
from inference.frames import GATE_THRESHOLD
from inference.stream import (DEFAULT_MARGIN, DEFAULT_WINDOW, SMOOTHING_MODES, VIDEO_EXTENSIONS, StreamOptions,
                              StreamStopped, is_video, open_stream, write_stream)


def add_stream_arguments(p) -> None:
    g = p.add_argument_group("streams (a video file, or a folder of frames with --stream)")
    g.add_argument("--stream", action="store_true",
                   help="treat a folder of images as the frames of one stream, in natural name order "
                        "(frame2 before frame10); video files (" + ", ".join(VIDEO_EXTENSIONS) +
                        ") are always streams")
    g.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                   help="frames over which the head choice is smoothed")
    g.add_argument("--smoothing", default="mean", choices=[m for m in SMOOTHING_MODES if m != "raw"],
                   help="mean: prototype distances (each frame's divided by its minimum) averaged over "
                        "the window, switching only when another head is nearer by --switch-margin; "
                        "vote: the majority of per-frame nearest prototypes in the window")
    g.add_argument("--switch-margin", type=float, default=DEFAULT_MARGIN,
                   help="hysteresis of --smoothing mean: another head must be this much nearer "
                        "(relative, 0.05 = 5%%) than the current one to take over")
    g.add_argument("--no-smoothing", action="store_true",
                   help="the raw per-frame rule: each frame's nearest prototype")
    g.add_argument("--save-depth", action="store_true",
                   help="also write <name>_depth/<frame>_depth.png (16-bit mm) and .npy (metres) per frame")
    g.add_argument("--fps", type=float, default=None,
                   help="frame rate of the written video (default: the input video's, 10 for frames)")
    g.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    g.add_argument("--reselect", type=float, default=GATE_THRESHOLD,
                   help="the automatic head's selection runs again only when the frame's mean colour in "
                        "6x8 cells moved by more than this since the last selection (mean absolute "
                        "difference in normalised units; and at least every 15 frames); 0: selection on "
                        "every frame (the rule before)")
    g.add_argument("--frames-at-once", type=int, default=None, metavar="N",
                   help="frames in flight at once, each with its share of the torch threads, their heads "
                        "still chosen in frame order (default: 2 on a CPU with the PyTorch backend and at "
                        "least 2 threads, else 1): more frames/s, each frame's latency longer "
                        "(docs/BENCHMARKS.md#frames-at-once); 1: one frame at a time")
    g.add_argument("--no-threads", action="store_true",
                   help="decode and write in the main thread (for timing comparisons)")


def is_stream_input(args) -> bool:
    return is_video(args.input) or bool(getattr(args, "stream", False))


def stream_options(args) -> StreamOptions:
    """predict.py's stream settings (checked: one error line each). A head given with --domain needs
    no smoothing, so its window and margin are not checked."""
    for opt, bad in (("--ply", args.ply), ("--recursive", args.recursive)):
        if bad:
            raise CLIError(f"{opt} does not apply to a stream (a video file or --stream)")
    try:
        level = parse_interval(args.intervals) if args.intervals is not None else 0.9
    except ValueError as e:
        raise CLIError(str(e)) from None
    per_frame = args.no_smoothing or args.domain is not None
    return StreamOptions(smoothing="raw" if per_frame else args.smoothing, window=args.window,
                         margin=args.switch_margin, video=not args.no_plots, save_depth=args.save_depth,
                         fps=args.fps, max_frames=args.max_frames, threads=not args.no_threads,
                         clamp=not args.no_clamp, max_depth=args.max_depth, interval=level,
                         reselect=args.reselect, frames_at_once=args.frames_at_once)


def stopped_exit(stop: StreamStopped) -> SystemExit:
    """How a stream stopped half way ends the command: Ctrl-C a line and exit status 130, anything
    else one ``error:`` line saying what stopped it and how far it got."""
    if isinstance(stop.cause, KeyboardInterrupt):
        print(f"interrupted: {stop.done}", file=sys.stderr)
        return SystemExit(130)
    return CLIError(f"{error_line(stop.cause)}; {stop.done}")


def main_stream(args, load_model) -> int:
    """The stream path of predict.py; ``load_model()`` builds its Predictor once the input is known
    to be a stream it can read. Returns the exit status."""
    options = stream_options(args)
    out_dir = Path(args.out)
    with open_stream(Path(args.input), out_dir, args.max_pixels) as source:
        model = load_model()
        try:
            with tqdm(desc="stream", unit="frame", total=args.max_frames, disable=args.quiet,
                      dynamic_ncols=True) as bar:
                summary = write_stream(model, source, out_dir, options, on_frame=lambda r: tick(bar, model, r))
        except StreamStopped as stop:
            raise stopped_exit(stop) from None
    outputs = summary["outputs"]
    print(f"{summary['frames']} frame(s), {summary['frames_per_s']:.1f} frames/s, {summary['switches']} head "
          f"switch(es) (per-frame rule: {summary['raw_switches']}) -> "
          f"{outputs['video'] if outputs['video'] is not None else outputs['log']}")
    return 0


def tick(bar, model, record) -> None:
    """The progress bar after one frame: the head chosen and the frame's latency."""
    bar.set_postfix_str(f"{model.letters[record['head']]} {record['latency_ms']:.0f} ms", refresh=False)
    bar.update(1)
