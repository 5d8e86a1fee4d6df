"""The README's Python API block runs as written and does what its comments say."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_api_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section holds one python block"
    return blocks[0]


def test_the_readme_python_block_trains_evaluates_and_predicts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its relative paths (datasets/api, runs/api) land here
    names: dict = {}
    exec(compile(readme_api_block(), "README.md (Python API)", "exec"), names)
    checkpoint, matrix, frame = Path(names["checkpoint"]), names["matrix"], names["frame"]
    assert checkpoint == Path("runs/api/NK.pth.tar") and checkpoint.is_file()
    assert (tmp_path / "runs/api/N.pth.tar").is_file()
    # the matrix: N after N, N and K after NK, each a finite error; forgetting of N reported
    abs_rel = matrix["matrix"]["abs_rel"]
    assert [len(row) for row in abs_rel] == [1, 2] and all(0 < v < 10 for row in abs_rel for v in row)
    assert "kitti (K)" in matrix["tables"]["abs_rel"]
    # a whole frame in, metres out at the frame's own size
    width, height = names["read_rgb"](names["street"]).size
    assert frame["depth"].shape == (height, width) and (frame["depth"] > 0).all()
    assert frame["head"] in (0, 1)
    # predict.py's files of that frame, from the API (inference/outputs.py)
    assert [p.name for p in names["files"].paths] == ["street_depth.png", "street_depth.npy", "street_depth_color.png",
                                                      "street_uncertainty.png", "street.ply"]
    assert all((tmp_path / "predictions" / p.name).is_file() for p in names["files"].paths)
