"""A resumed stage keeps the run's options (issue 40 item 6): a change of scale, data root, encoder,
batch size or lr is refused, naming each change, unless --allow-changes (then each is printed)."""
from __future__ import annotations

import pytest

from cli import train as train_cli
from engine import stage as engine_stage
from engine.options import StageOptions
from engine.stage import resume_changes


def options(root, runs, *extra):
    return ["--data-root", str(root), "--runs-dir", str(runs), "--scale", "0.25", "--batch-size", "2",
            "--workers", "0", "--val-images", "0", "--proto-images", "2", "--encoder", "resnet18",
            "--max-steps", "2", "--quiet", *extra]


@pytest.fixture
def interrupted_run(synthetic_root, tmp_path, monkeypatch):
    original = engine_stage.Stage.train_step

    def stop_at_1(self, micro):
        if self.global_step == 1:
            raise KeyboardInterrupt
        return original(self, micro)
    monkeypatch.setattr(engine_stage.Stage, "train_step", stop_at_1)
    with pytest.raises(SystemExit):
        train_cli.main("N", "", options(synthetic_root, tmp_path / "r"))
    monkeypatch.setattr(engine_stage.Stage, "train_step", original)
    assert (tmp_path / "r" / "N" / "last.pth.tar").is_file()
    return tmp_path / "r"


def test_a_resume_with_other_options_is_refused_naming_each_change(interrupted_run, synthetic_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        train_cli.main("N", "", options(synthetic_root, interrupted_run, "--resume", "--scale", "0.2", "--lr", "0.5"))
    msg = str(stop.value.code)
    assert msg.startswith("error: --resume") and "--scale 0.25 -> 0.2" in msg and "--lr" in msg and "-> 0.5" in msg
    assert "--allow-changes" in msg and not (interrupted_run / "N.pth.tar").exists()
    path = train_cli.main("N", "", options(synthetic_root, interrupted_run, "--resume", "--batch-size", "3",
                                           "--allow-changes"))
    assert "resuming with a changed option: --batch-size 2 -> 3" in capsys.readouterr().out + capsys.readouterr().err
    assert path.endswith("N.pth.tar")


def test_resume_changes_compares_the_recorded_options():
    saved = {"scale": 0.5, "data_root": "datasets/x", "encoder": "resnet34", "batch_size": 8, "lr": 1e-4}
    same = StageOptions(scale=0.5, data_root="datasets/x/", encoder="resnet34", batch_size=8, lr=1e-4)
    assert resume_changes(saved, same) == [] and resume_changes(None, same) == []
    other = StageOptions(scale=0.25, data_root="datasets/y", encoder="resnet18", batch_size=4, lr=1e-3)
    assert [c.split()[0] for c in resume_changes(saved, other)] == ["--scale", "--data-root", "--encoder",
                                                                     "--batch-size", "--lr"]


def test_amp_off_and_precision_fp32_resolve_alike(synthetic_root, tmp_path):
    """Training's --precision auto|fp32|bf16|fp16 (inference's choices) replaced --amp auto|off|bf16|fp16
    (issue 41); --amp stays accepted, off meaning fp32, in every command that trains."""
    import dataclasses

    import torch

    from cli import add_domain as add_domain_cli
    from cli import quickstart as quickstart_cli
    from engine.options import resolve_options
    from engine.processes import amp_settings

    parser = train_cli.build_parser("N", "")
    for older, newer in (("off", "fp32"), ("bf16", "bf16"), ("fp16", "fp16"), ("auto", "auto")):
        resolved = [dataclasses.asdict(resolve_options(train_cli.stage_options(parser.parse_args(
            options(synthetic_root, tmp_path / "r", flag, value)), "N")))
            for flag, value in (("--amp", older), ("--precision", newer))]
        assert resolved[0] == resolved[1] and resolved[0]["precision"] == newer
        assert amp_settings(older, torch.device("cpu")) == amp_settings(newer, torch.device("cpu"))
    help_text = parser.format_help()  # the older spelling: no option of its own, named in --precision's help
    assert "[--amp" not in help_text and "\n  --amp" not in help_text and "older spelling" in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["--amp", "fp32"])  # --amp keeps its own choices
    base = ["--prior", "p", "--name", "o", "--letter", "O", "--src", "s"]
    p = add_domain_cli.build_parser()
    assert p.parse_args(base + ["--amp", "off"]).precision == p.parse_args(base + ["--precision", "fp32"]).precision
    p = quickstart_cli.build_parser()
    assert p.parse_args(["--amp", "off"]).precision == p.parse_args(["--precision", "fp32"]).precision == "fp32"
    assert StageOptions(amp="off") == StageOptions(precision="fp32")  # the Python API's older keyword


def test_an_older_record_with_amp_loads():
    """Checkpoints and options.json written before the rename hold ``amp``: they still load, as
    --precision (off: fp32), for test.py's reading of a checkpoint's options and for a resume."""
    for amp, precision in (("off", "fp32"), ("bf16", "bf16"), ("auto", "auto")):
        old = StageOptions.from_record({"amp": amp, "scale": 0.5, "order": "NK"})
        assert old.precision == precision and old.scale == 0.5 and old.order == "NK"
    assert StageOptions.from_record({"precision": "bf16"}).precision == "bf16"
    assert StageOptions.from_record({"amp": "off"}, precision="bf16").precision == "bf16"  # an override wins
