"""The add_domain.py command: a new domain from your own RGB-D recording, in one command.

  python add_domain.py --prior runs/NKS.pth.tar --name office --letter O --src recordings/office \\
      --layout tum --intrinsics 535.4,539.2,320.1,247.6

It reads and checks the recording (data/recordings.py: tum, png16, npy = float metres in .npy or
OpenEXR .exr files, kitti), writes the domain's description (<data-root>/domains.json) and index
CSVs, learns the new head with the training engine (distillation + replay, as train_NKS.py; the
calibration, frame statistics and out-of-domain threshold are fitted at the stage's end), and
writes REPORT.md beside the new checkpoint: the new domain's accuracy, every old domain's
forgetting, the head-selection confusion matrix with the new domain, and the cost. The library is
cli/new_domain.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import os

# OpenMP threads that spin while waiting slow a shared CPU badly (see cli/quickstart.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cli.errors import run_command  # noqa: E402
from cli.options import HelpFormatter, add_older_amp_argument  # noqa: E402
from cli.new_domain import AddDomainOptions, add_domain  # noqa: E402

REQUIRED = ("prior", "name", "letter", "src")
TYPES = {"int": int, "float": float, "str": str}


class Formatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The options' defaults shown, the description's lines kept."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    for f in dataclasses.fields(AddDomainOptions):
        flag = "--" + f.name.replace("_", "-")
        kw = {"help": f.metadata["help"], "dest": f.name}
        if isinstance(f.default, bool):
            kw["action"] = "store_true"
        else:
            kw.update(default=f.default, type=TYPES[f.type.replace(" | None", "")])
        if f.name in REQUIRED:
            kw["required"] = True
        if f.name == "layout":
            kw["choices"] = ["tum", "png16", "npy", "kitti"]
        p.add_argument(flag, **kw)
    add_older_amp_argument(p)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


def run(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    options = AddDomainOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AddDomainOptions)})
    result = add_domain(options)
    print(open(result["files"]["report"], encoding="utf-8").read())
    print(f"wrote {result['files']['checkpoint']} and {result['files']['report']}")
    return 0


def main(argv=None) -> int:
    """add_domain.py; a user error is one ``error:`` line, exit status 1."""
    return run_command(run, argv)
