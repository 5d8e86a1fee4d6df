"""The training commands train_N.py, train_NK.py, train_NKS.py: options -> engine.run.train_stage.

The parser is built from :class:`engine.options.StageOptions` (each field one option: its name,
default, choices, help text and help group), so an option is declared once. A user error of the
library is one ``error:`` line (exit status 1); a stage stopped by SIGINT / SIGTERM exits with
130 / 143 after saving its resume state.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

from cli.errors import CLIError, printable, USER_ERRORS
from cli.options import HelpFormatter, add_device_argument, add_protocol_argument, add_training_precision_argument
from base.errors import InputError
from engine.options import StageOptions, flag, option_fields, order_specs
from engine.processes import StageInterrupted
from engine.run import train_stage

TYPES = {"int": int, "float": float, "str": str}
# options other commands share, declared by cli/options (the help text still the field's)
SHARED = {"device": add_device_argument, "precision": add_training_precision_argument}


def add_field(p: argparse.ArgumentParser, g, f: dataclasses.Field, first_stage: bool, default_order: str) -> None:
    """The option of StageOptions field ``f`` in group ``g``."""
    meta = f.metadata
    if f.name == "protocol":
        return add_protocol_argument(p, g)
    if f.name in SHARED:
        return SHARED[f.name](g, help=meta["help"])
    text = meta["first_help"] if first_stage and meta["first_help"] else meta["help"]
    if f.name == "order":  # its help names the command's own default order
        text = text.format(default=default_order)
    kwargs = dict(default=f.default, help=text, **meta["cli"])
    kind = f.type.replace(" | None", "")
    if kind == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction if f.default is None else "store_true"
    else:
        kwargs["type"] = TYPES[kind]
    if "choices" in meta:
        kwargs["choices"] = list(meta["choices"])
    # the first stage also takes --domain (the older spelling of its --order)
    names = (flag(f.name), "--domain") if f.name == "order" and first_stage else (flag(f.name),)
    g.add_argument(*names, dest=f.name, **kwargs)


def build_parser(default_order: str, description: str) -> argparse.ArgumentParser:
    """Every option of StageOptions in its help group (saved as options.json beside the run)."""
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    groups = {}
    for f in option_fields():
        group = f.metadata["group"]
        if group not in groups:
            groups[group] = p.add_argument_group(group)
        add_field(p, groups[group], f, len(default_order) == 1, default_order)
    return p


def stage_options(args: argparse.Namespace, default_order: str) -> StageOptions:
    """The parsed options as settings; without --order, the command's own order."""
    values = {f.name: getattr(args, f.name) for f in option_fields()}
    values["order"] = args.order if args.order is not None else default_order
    return StageOptions(**values, order_given=args.order is not None)


def check_command_order(options: StageOptions, default_order: str) -> None:
    """train_N.py learns a first domain only (later stages are train_NK.py / train_NKS.py)."""
    letters = "".join(s.letter for s in order_specs(options))
    if len(default_order) == 1 and len(letters) != 1 and options.strategy != "joint":
        raise InputError(f"train_N.py learns one domain; got {options.order.strip()!r} (use train_NK.py / "
                         f"train_NKS.py --order for later stages)")


def run(options: StageOptions, default_order: str | None = None) -> str:
    """train_stage as a command: a user error of the library is one ``error:`` line, an interrupt
    the exit status 130 (SIGINT) or 143 (SIGTERM); ``default_order``: the command's own order
    (train_N.py's "N" refuses later stages)."""
    try:
        if default_order is not None:
            check_command_order(options, default_order)
        return str(train_stage(options))
    except USER_ERRORS as err:
        raise CLIError(printable(err)) from None
    except StageInterrupted as stop:  # its resume state is saved
        raise SystemExit(128 + stop.signum) from None
    except KeyboardInterrupt:  # outside the training loop
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def main(default_order: str, description: str, argv=None) -> str:
    """Parse options and run one stage; returns the path of the final checkpoint.

    Every user error (bad option, data, checkpoint, full disk) ends in SystemExit with one
    ``error: ...`` message, no traceback; an interrupt ends with 130 (SIGINT) or 143 (SIGTERM)."""
    args = build_parser(default_order, description).parse_args(argv)
    return run(stage_options(args, default_order), default_order)
