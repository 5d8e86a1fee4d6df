"""Settings a user mistypes end in one line, before any work (issue 40 items 13 and Low):
--switch-margin nan, --fps inf, --predictor-option precision=fp64, train_stage with wrongly typed
settings (and pathlib.Path roots accepted, no run folder made before the check)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from base.errors import InputError
from engine.options import StageOptions, resolve_options
from inference.predictor import RuntimeOptions
from inference.stream import StreamOptions


@pytest.mark.parametrize("margin", [math.nan, math.inf, -0.1])
def test_a_switch_margin_that_cannot_work_is_refused(margin):
    with pytest.raises(InputError, match="--switch-margin"):
        StreamOptions(margin=margin)


@pytest.mark.parametrize("fps", [math.inf, math.nan, 0.0])
def test_an_fps_that_cannot_work_is_refused(fps):
    with pytest.raises(InputError, match="--fps"):
        StreamOptions(fps=fps)


@pytest.mark.parametrize("extra,expected", [({"precision": "fp64"}, "precision='fp64'"),
                                            ({"backend": "tensorrt"}, "backend='tensorrt'"),
                                            ({"jit": "yes"}, "expected true or false")])
def test_a_predictor_option_value_is_checked(extra, expected):
    with pytest.raises(InputError, match=expected):
        RuntimeOptions(extra=extra).keywords()


def test_the_commands_say_it_in_one_line(tmp_path):
    from cli import predict
    from helpers import make_checkpoint, write_image, torch_threads
    ckpt = tmp_path / "N.pth.tar"
    with torch_threads(1):
        make_checkpoint(ckpt, letters="N")
    img = write_image(tmp_path / "a.png", (24, 32))
    with pytest.raises(SystemExit) as stop:
        predict.main([str(img), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--quiet",
                      "--predictor-option", "precision=fp64"])
    assert str(stop.value.code).startswith("error: precision='fp64': expected one of")


@pytest.mark.parametrize("field,value", [("batch_size", "8"), ("lr", "1e-3"), ("scale", None), ("quiet", 1),
                                         ("data_root", 5)])
def test_train_stage_settings_of_the_wrong_type_are_one_input_error(tmp_path, field, value):
    from engine.run import train_stage
    opts = StageOptions(order="N", data_root=str(tmp_path / "data"), runs_dir=str(tmp_path / "runs"))
    setattr(opts, field, value)
    with pytest.raises(InputError, match=f"--{field.replace('_', '-')}"):
        train_stage(opts)
    assert not (tmp_path / "runs").exists()  # no run folder, no lock before the check


def test_a_pathlib_data_root_is_accepted(tmp_path):
    opts = resolve_options(StageOptions(order="N", data_root=tmp_path / "data", runs_dir=tmp_path / "runs"))
    assert opts.data_root == str(tmp_path / "data") and opts.out == str(Path(tmp_path / "runs" / "N.pth.tar"))
