"""Write the index CSVs (train, test, replay) of a real dataset on disk.

Rows are `image_path,depth_path` relative to --data-root (the loaders resolve them against it), so
put or symlink the dataset inside the data root, e.g. `ln -s /data/nyu datasets/nyu`; a source
outside the data root works too, its rows then start with `../`.

  python prepare_data.py nyu     --src datasets/nyu_data           # data/nyu2_train, data/nyu2_test
  python prepare_data.py kitti   --src datasets/kitti --raw datasets/kitti/raw
  python prepare_data.py scannet --src datasets/scannet --test-scenes test_scenes.txt
  python prepare_data.py nyu_h5  --src datasets/nyudepthv2          # train/ and val/ of .h5 files
  python prepare_data.py nyu_mat --mat datasets/nyu_depth_v2_labeled.mat --splits splits.mat
  python prepare_data.py generic --domain O --src datasets/office   # custom domain (domains.json)
  python prepare_data.py replay  --domain N                         # (re)draw replay_nyu.csv

Every file pair is checked (readable header, depth bit depth, equal sizes where required) and the
skipped files are reported with the reason.  The replay CSV holds --replay-size random training
rows (seeded).
"""
from __future__ import annotations

import argparse
import dataclasses

from cli.errors import run_command
from data import prepare


def add_settings_arguments(parser, settings_class) -> None:
    """One option per field of a settings dataclass (data.prepare): --field-name, its help from the
    field's metadata, required when the field has no default, typed by the default; a bool that
    is on by default is switched off with --no-field-name."""
    for f in dataclasses.fields(settings_class):
        flag, kw = "--" + f.name.replace("_", "-"), {"help": f.metadata["help"]}
        if f.default is dataclasses.MISSING:
            kw["required"] = True
        elif isinstance(f.default, bool):
            flag = ("--no-" + flag[2:]) if f.default else flag
            kw.update(action="store_false" if f.default else "store_true", dest=f.name)
        elif f.default is not None:
            kw.update(default=f.default, type=type(f.default))
        parser.add_argument(flag, **kw)


def settings_from(settings_class, args: argparse.Namespace):
    """The settings dataclass filled from the parsed options of :func:`add_settings_arguments`."""
    return settings_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(settings_class)})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="DATASET")
    for name, source in prepare.SOURCES.items():
        s = sub.add_parser(name, help=source.summary)
        add_settings_arguments(s, source)
        add_settings_arguments(s, prepare.IndexOptions)
    s = sub.add_parser("replay", help="(re)draw a replay CSV from an existing training CSV")
    add_settings_arguments(s, prepare.ReplaySettings)
    return p


def run_replay(args) -> int:
    settings = settings_from(prepare.ReplaySettings, args)
    out, n, train = prepare.draw_replay(settings)
    print(f"replay: wrote {out} ({n} rows drawn from {train}, seed {settings.seed})")
    return 0


def run(argv=None) -> int:
    """Exit status 0 when an index was written, 1 when the source gave none."""
    args = build_parser().parse_args(argv)
    if args.cmd == "replay":
        return run_replay(args)
    report = prepare.prepare(settings_from(prepare.SOURCES[args.cmd], args),
                             settings_from(prepare.IndexOptions, args))
    print(report.text())
    if report.skip_list:
        print(f"full list of skipped files: {report.skip_list}")
    return 0 if report.written else 1


def main(argv=None) -> int:
    """prepare_data.py; a dataset it cannot index is one ``error:`` line, exit status 1."""
    return run_command(run, argv)
