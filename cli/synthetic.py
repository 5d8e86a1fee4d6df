"""The synthetic.py command: options, their check, data.synthetic.generate, the summary lines."""
from __future__ import annotations

import argparse

from cli.errors import run_command
from data import synthetic


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, epilog kept as written."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Generate synthetic NYU-, KITTI- and ScanNet-like stand-in domains (procedural, ray-cast, "
                    "exact depth) in the real datasets' file layouts and formats, with their index CSVs, "
                    "replay CSVs and meta.json.",
        epilog="Output (paths relative to --out):\n"
               "  N  data/nyu2_train/<scene>/<n>.jpg|png (8-bit depth, m = v/255*10), "
               "data/nyu2_test/<i>_colors|depth.png (16-bit mm)\n"
               "  K  raw/<date>/<drive>/image_02/data/<frame>.png + "
               "train/<drive>/proj_depth/groundtruth/image_02/<frame>.png,\n"
               "     val_selection_cropped/{image,groundtruth_depth}/... (16-bit, m = v/256, 0 = none)\n"
               "  S  scans/scene<id>_00/color/<n>.jpg (1296x968) + depth/<n>.png (640x480, 16-bit mm, 0 = hole)\n"
               "  CSVs nyu2_train/test, kitti_train_sparse, kitti_val_select, scannet_train/test, "
               "replay_<domain>; meta.json",
        formatter_class=_HelpFormatter)
    p.add_argument("--out", default="datasets/synthetic",
                   help="output root (the --data-root of the other scripts); CSV paths are relative to it")
    p.add_argument("--train", type=int, default=300, help="training samples per domain")
    p.add_argument("--test", type=int, default=100, help="test samples per domain")
    p.add_argument("--seed", type=int, default=0,
                   help="base seed; each sample is seeded from (seed, domain, split, index), so the same seed "
                        "gives byte-identical files whatever --workers is")
    p.add_argument("--workers", type=int, default=synthetic.default_workers(),
                   help="parallel worker processes, one per CPU available to this process by default")
    p.add_argument("--replay-size", type=int, default=500,
                   help="rows of each replay_<domain>.csv: min(this, --train) rows drawn at random (seeded) "
                        "from the domain's training CSV")
    p.add_argument("--render", "--domains", dest="domains", metavar="LETTERS", default="NKS",
                   help="which domains to generate: letters N (nyu), K (kitti), S (scannet), or names, e.g. NK "
                        "or nyu,scannet (--domains: the old, deprecated spelling)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="render at this fraction of the real sizes (intrinsics scaled), for quick tests; "
                        "1.0 = 640x480 (N, S depth), 1216x352 (K), 1296x968 (S colour)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --out whose index CSVs were not made by synthetic.py (a real "
                        "dataset's); without it such a folder stops the command with an error")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def summary_line(name: str, domain: dict) -> str:
    """One domain of meta.json: counts, measured depth range, valid-pixel fractions."""
    counts, measured = domain["counts"], domain["measured"]
    return (f"{name:8s} train {counts['train']:5d}  test {counts['test']:5d}  "
            f"depth {measured['train']['depth_min']}..{measured['train']['depth_max']} m  "
            f"valid {measured['train']['valid_fraction']:.3f} (train) / "
            f"{measured['test']['valid_fraction'] or 0:.3f} (test)")


def run(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # checked before anything is written: a bad setting or a real dataset in --out leaves no file
    letters = synthetic.check_settings(args.train, args.test, args.replay_size, args.workers, args.scale,
                                       args.domains)
    synthetic.check_out(args.out, letters, args.overwrite)
    synthetic.tune_malloc()  # the command line owns its process; library callers keep their malloc settings
    data_meta = synthetic.generate(args.out, n_train=args.train, n_test=args.test, seed=args.seed,
                              workers=args.workers, replay_size=args.replay_size, domains=args.domains,
                              scale=args.scale, progress=not args.quiet, overwrite=args.overwrite)
    for name, domain in data_meta["domains"].items():
        print(summary_line(name, domain))
    print(f"wrote {args.out} in {data_meta['generation_seconds']:.1f} s")
    return 0


def main(argv=None) -> int:
    """Generate the synthetic domains; a setting that cannot work is one ``error:`` line, exit status 1."""
    return run_command(run, argv)
