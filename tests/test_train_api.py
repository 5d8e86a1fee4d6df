"""The training engine's library API: StageOptions -> engine.run.train_stage, and the command layer
(cli/train.py) built from the dataclass."""
import dataclasses
import json
import signal

import pytest

from cli import train as train_cli
from base.errors import InputError
from engine import stage as engine_stage
from engine.options import StageOptions, as_argv, option_fields, resolve_options
from engine.processes import StageInterrupted
from engine.run import train_stage
from helpers import make_data_root
from models import load_checkpoint


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_data_root(tmp_path_factory.mktemp("api_data"), letters="N", n_train=8, n_test=2, n_replay=4)


def tiny(root, runs, **extra) -> StageOptions:
    return StageOptions(order="N", data_root=str(root), runs_dir=str(runs), scale=0.25, batch_size=4, workers=0,
                        val_images=0, proto_images=4, encoder="resnet18", max_steps=1, quiet=True, **extra)


def test_train_stage_runs_without_argv_and_returns_the_checkpoint(root, tmp_path):
    options = tiny(root, tmp_path, lr=1.2345678e-7)
    out = train_stage(options)
    assert out == tmp_path / "N.pth.tar" and out.is_file()
    assert options.out is None and options.run_dir is None  # the caller's settings stay as given
    net = load_checkpoint(out)
    assert net.meta["letters"] == "N" and net.meta["options"]["max_steps"] == 1
    recorded = json.loads((tmp_path / "N" / "options.json").read_text())
    assert set(recorded) == {f.name for f in dataclasses.fields(StageOptions)}  # every option, resolved
    assert recorded["run_dir"] == str(tmp_path / "N") and recorded["batch_size"] == 4
    assert recorded["lr"] == 1.2345678e-7  # the record of a run is not rounded like the reports


def test_every_field_is_an_option_with_help():
    """A field without an option (or without help) fails here: the parser is built from the fields."""
    for order in ("N", "NK"):
        parser = train_cli.build_parser(order, "test")
        actions = {a.dest: a for a in parser._actions}
        for f in option_fields():
            assert f.name in actions, f"no option for StageOptions.{f.name}"
            assert actions[f.name].help, f"no help for --{f.name}"
            assert actions[f.name].default == f.default, f.name
        parsed = train_cli.stage_options(parser.parse_args([]), order)
        assert parsed == StageOptions(order=order, order_given=False)
    assert train_cli.build_parser("N", "").parse_args(["--domain", "K"]).order == "K"


def test_as_argv_is_what_the_parser_reads_back():
    options = StageOptions(order="NK", scale=0.25, lr=3e-4, max_steps=2, shared_head=True, drop_last=False,
                           reinit_old_heads=True, replay_exhaust="authors", resume="auto")
    argv = as_argv(options, [f.name for f in option_fields()])
    assert train_cli.stage_options(train_cli.build_parser("NK", "").parse_args(argv), "NK") == options


@pytest.mark.parametrize("name,value,word", [("epochs", 0, "--epochs 0: expected an integer >= 1"),
                                             ("strategy", "nope", "--strategy 'nope': expected one of"),
                                             ("order", "NQ", "--order 'NQ'")])
def test_bad_value_is_an_input_error_and_one_error_line(root, tmp_path, name, value, word):
    with pytest.raises(InputError, match=word):
        resolve_options(dataclasses.replace(tiny(root, tmp_path), **{name: value}))
    if name == "strategy":
        return  # on the command line argparse refuses it
    argv = ["--data-root", str(root), "--runs-dir", str(tmp_path), f"--{name}", str(value)]
    with pytest.raises(SystemExit) as stop:
        train_cli.main("N", "", argv)
    message = stop.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message
    assert word in message


def test_an_interrupted_stage_is_an_exception_and_exit_143(root, tmp_path, monkeypatch):
    def stopped(self, micro):
        self.signals.signum = signal.SIGTERM  # as the SIGTERM handler records it
        raise KeyboardInterrupt
    monkeypatch.setattr(engine_stage.Stage, "train_step", stopped)
    with pytest.raises(StageInterrupted) as stop:
        train_stage(tiny(root, tmp_path / "a"))
    assert stop.value.signum == signal.SIGTERM and (tmp_path / "a" / "N" / "last.pth.tar").is_file()
    with pytest.raises(SystemExit) as code:
        train_cli.run(tiny(root, tmp_path / "b"))
    assert code.value.code == 143
