"""add_domain.py (cli/new_domain.py): a new domain from a recording on top of a tiny model, in one
call, with its report; and the one-line errors of what it refuses."""
import json
import os

import pytest

from helpers import make_checkpoint, make_data_root, torch_threads

from base import domains as dom
from cli.add_domain import main
from data.synthetic import write_aerial_recording


@pytest.fixture
def prior(tmp_path):
    data = make_data_root(tmp_path / "data", "NK", n_train=8, n_test=2, n_replay=6, frame_scale=0.25)
    path = tmp_path / "NK.pth.tar"
    make_checkpoint(path, "NK", scale=0.25, prototypes="replay", data_root=data)
    yield path, data
    for name in ("aerial", "aerial2"):
        try:
            dom.unregister_domain(name)
        except (ValueError, KeyError):
            pass


def argv(tmp_path, prior, src, *extra):
    path, data = prior
    return ["--prior", str(path), "--name", "aerial", "--letter", "A", "--src", str(src), "--replay-root",
            str(data), "--data-root", str(tmp_path / "aerial"), "--runs-dir", str(tmp_path / "runs"), "--quiet",
            *extra]


def test_a_domain_from_a_tum_recording_in_one_command(tmp_path, prior, capsys):
    info = write_aerial_recording(str(tmp_path / "rec"), "tum", 14, scale=0.25)
    before = sorted(os.listdir(prior[1]))
    with torch_threads(1):
        assert main(argv(tmp_path, prior, tmp_path / "rec", "--layout", "tum", "--depth-unit", str(info["unit"]), "--intrinsics",
                         ",".join(f"{v:g}" for v in info["intrinsics"]), "--steps", "1", "--batch-size", "2",
                         "--replay-size", "6", "--proto-images", "6")) == 0
    result = json.loads((tmp_path / "runs" / "NKA" / "add_domain.json").read_text())
    assert result["order"] == "NKA" and (tmp_path / "runs" / "NKA.pth.tar").is_file()
    assert result["recording"]["frames"] == 14 and result["recording"]["test"] == 3   # the last fifth
    # the writer's depth frame recorded after the colour stream stopped
    assert result["recording"]["skipped"] == {"depth frame without a colour frame within 0.02 s": 1}
    assert set(result["old_domains"]) == {"N", "K"}
    for o in result["old_domains"].values():   # forgetting = after minus before, of the evaluation's numbers
        # (each stored rounded to 6 decimals: the difference of the rounded figures may
        # differ from the rounded difference in its last digits)
        assert o["forgetting_abs_rel"] == pytest.approx(o["after"]["abs_rel"] - o["before"]["abs_rel"], abs=2e-6)
    assert result["new_domain"]["count"] == 3
    assert result["selection"]["columns"] == ["N", "K", "A"] and sum(result["selection"]["confusion"]["A"]) == 3
    spec = json.loads((tmp_path / "aerial" / "domains.json").read_text())[0]
    assert spec["letter"] == "A" and spec["depth_encoding"]["train"]["scale"] == info["unit"]
    assert spec["camera"][4:] == info["size"]
    assert result["cost"]["checkpoint_mb"] > 0
    assert "forgetting" in capsys.readouterr().out
    assert sorted(os.listdir(prior[1])) == before      # the replay root is only read


@pytest.mark.parametrize("extra, message", [
    (("--letter", "K"), "--letter K: already taken by the prior's domain 'kitti'"),
    (("--encoder", "resnet34"), "its encoder is resnet18, expected resnet34"),
    (("--batch-size", "16"), "training frames (0 of them held out for validation) are fewer than a batch of 16"),
])
def test_refusals_are_one_error_line(tmp_path, prior, capsys, extra, message):
    write_aerial_recording(str(tmp_path / "rec"), "png16", 6, scale=0.125)
    with pytest.raises(SystemExit) as stop:
        main(argv(tmp_path, prior, tmp_path / "rec", *extra))
    text = str(stop.value.code)
    assert text.startswith("error: ") and message in text and "\n" not in text
    assert not (tmp_path / "runs").exists()          # refused before anything was trained


def test_index_csvs_it_did_not_make_are_kept(tmp_path, prior):
    """The write guard (base.safeio.check_write): an aerial_train.csv already in --data-root that
    add_domain.py did not write (a dataset's own) stops the command before anything is written."""
    write_aerial_recording(str(tmp_path / "rec"), "png16", 6, scale=0.125)
    (tmp_path / "aerial").mkdir()
    (tmp_path / "aerial" / "aerial_train.csv").write_text("mine.png,mine_depth.png\n")
    with pytest.raises(SystemExit) as stop:
        main(argv(tmp_path, prior, tmp_path / "rec"))
    assert "not made by add_domain.py" in str(stop.value.code)
    assert sorted(os.listdir(tmp_path / "aerial")) == ["aerial_train.csv"] and not (tmp_path / "runs").exists()
