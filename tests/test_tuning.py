"""The default backend measured on the machine at hand (models/tuning.py, predict.py's --backend
auto): the fastest candidate meeting the accuracy bound, with forced timings (no real timing here);
the cache and its key."""
import json
import os

import pytest
import torch

from models import tuning
from models.runtimes import BACKEND_ENV
from helpers import make_checkpoint

REF = {"domain": torch.tensor([0, 1, 2]), "depth": torch.linspace(1.0, 9.0, 3 * 8).reshape(3, 1, 2, 4)}
GT = REF["depth"] * 1.1


def outputs(**changes):
    out = {"domain": REF["domain"].clone(), "depth": REF["depth"].clone()}
    if "heads" in changes:
        out["domain"] = torch.tensor(changes["heads"])
    if "scale" in changes:
        out["depth"] = out["depth"] * changes["scale"]
    return out


CANDS = [("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("openvino", "bf16"), ("openvino", "fp32")]
# what each candidate computes, and its forced time (s)
RESULTS = {("torch", "fp32"): outputs(), ("torch", "bf16"): outputs(scale=1.0001),
           ("onnxruntime", "fp32"): outputs(), ("openvino", "bf16"): outputs(heads=[0, 2, 2]),
           ("openvino", "fp32"): outputs(scale=1.05)}
TIMES = {("torch", "fp32"): 0.090, ("torch", "bf16"): 0.050, ("onnxruntime", "fp32"): 0.070,
         ("openvino", "bf16"): 0.030, ("openvino", "fp32"): 0.040}


def run(backend, precision):
    return lambda: RESULTS[(backend, precision)]


def timer(fn, candidate):
    return TIMES[candidate]


def test_the_chosen_backend_is_the_fastest_of_those_meeting_the_bound(tmp_path):
    lines = []
    c = tuning.choose_measured(run, (64, 96), cands=CANDS, timer=timer, gt=GT, folder=tmp_path, log=lines.append)
    rows = {(r["backend"], r["precision"]): r for r in c["rows"]}
    # OpenVINO bf16 is fastest but chose another head; OpenVINO fp32 next but 5 % off in RMSE
    assert not rows[("openvino", "bf16")]["accurate"] and not rows[("openvino", "bf16")]["same_heads"]
    assert not rows[("openvino", "fp32")]["accurate"] and rows[("openvino", "fp32")]["rmse_change"] > 0.002
    assert rows[("torch", "bf16")]["accurate"] and rows[("torch", "bf16")]["rmse_change"] < 0.002
    assert (c["backend"], c["precision"]) == ("torch", "bf16") and not c["cached"]
    # reported once, what was measured and what was chosen
    assert len(lines) == 1 and "torch bf16 50.0 ms" in lines[0] and "outside the accuracy bound" in lines[0]
    # measured again (refresh): the same answer
    c = tuning.choose_measured(run, (64, 96), cands=CANDS, timer=timer, gt=GT, folder=tmp_path, refresh=True)
    assert c["backend"] == "torch"
    TIMES_SLOW_BF16 = {**TIMES, ("torch", "bf16"): 0.2}
    c = tuning.choose_measured(run, (64, 96), cands=CANDS, timer=lambda f, k: TIMES_SLOW_BF16[k], gt=GT,
                               folder=tmp_path, refresh=True)
    assert (c["backend"], c["precision"]) == ("onnxruntime", "fp32")  # the fastest left that meets it


def test_a_failing_runtime_is_no_candidate_and_nothing_accurate_falls_back_to_float32(tmp_path):
    def broken(backend, precision):
        if backend == "openvino":
            raise RuntimeError("cannot compile")
        return run(backend, precision)
    c = tuning.choose_measured(broken, (64, 96), cands=CANDS, timer=timer, gt=GT, folder=tmp_path)
    assert c["backend"] == "torch" and c["precision"] == "bf16"
    assert all("error" in r for r in c["rows"] if r["backend"] == "openvino")


def test_the_cache_answers_until_its_key_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(tuning, "load_now", lambda: 0.5)  # an idle machine throughout
    first = tuning.choose_measured(run, (64, 96), cands=CANDS, timer=timer, gt=GT, folder=tmp_path)
    files = list(tmp_path.glob("backend-*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert saved["key"]["input"] == [64, 96] and saved["key"]["versions"]["torch"] == torch.__version__
    assert "cpu" in saved["key"] and saved["backend"] == first["backend"]

    def never(*a):
        raise AssertionError("measured again")
    again = tuning.choose_measured(never, (64, 96), cands=CANDS, timer=never, gt=GT, folder=tmp_path)
    assert again["cached"] and (again["backend"], again["precision"]) == (first["backend"], first["precision"])
    # another input size, another package version, another CPU: measured again
    calls = []
    counting = lambda b, p: calls.append((b, p)) or run(b, p)  # noqa: E731
    tuning.choose_measured(counting, (128, 192), cands=CANDS, timer=timer, gt=GT, folder=tmp_path)
    assert len(calls) == len(CANDS)
    monkeypatch.setattr(tuning, "versions", lambda: {"torch": "0.0", "onnxruntime": None, "openvino": None})
    tuning.choose_measured(counting, (64, 96), cands=CANDS, timer=timer, gt=GT, folder=tmp_path)
    assert len(calls) == 2 * len(CANDS)
    monkeypatch.setattr(tuning.hardware, "capability_line", lambda device="cpu": "another CPU")
    tuning.choose_measured(counting, (64, 96), cands=CANDS, timer=timer, gt=GT, folder=tmp_path)
    assert len(calls) == 3 * len(CANDS) and len(list(tmp_path.glob("backend-*.json"))) == 4
    # a change of what the candidates compute (tuning.RULE): the answers of the code before are stale
    monkeypatch.setattr(tuning, "RULE", tuning.RULE + 1)
    tuning.choose_measured(counting, (64, 96), cands=CANDS, timer=timer, gt=GT, folder=tmp_path)
    assert len(calls) == 4 * len(CANDS) and len(list(tmp_path.glob("backend-*.json"))) == 5
    # a broken cache file (a killed writer's) is measured again, not an error
    files[0].write_text("{")
    monkeypatch.undo()
    monkeypatch.setattr(tuning, "load_now", lambda: 0.5)
    tuning.choose_measured(counting, (64, 96), cands=CANDS, timer=timer, gt=GT, folder=tmp_path)
    assert len(calls) == 5 * len(CANDS)


def test_the_cache_lives_in_the_users_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tuning.cache_dir() == tmp_path / "xdg" / "lifelong-monodepth"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tuning.cache_dir() == tmp_path / "home" / ".cache" / "lifelong-monodepth"


def test_predict_builds_the_measured_choice_and_a_flag_or_the_environment_forces_one(tmp_path, monkeypatch):
    from inference.predictor import RuntimeOptions, build_predictor, measurable
    ckpt = tmp_path / "NK.pth.tar"
    make_checkpoint(ckpt, "NK", scale=0.25)  # no prototypes: the probe runs head 0
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    monkeypatch.setattr(tuning, "candidates", lambda device="cpu": [("torch", "fp32"), ("torch", "bf16")])
    forced = {("torch", "fp32"): 0.01, ("torch", "bf16"): 0.02}  # float32 forced faster here
    monkeypatch.setattr(tuning, "time_call", lambda fn, candidate=None: forced[candidate])
    p = build_predictor(ckpt, RuntimeOptions(measure=True))
    assert p.backend == "torch" and p.dtype == torch.float32 and "measured fastest" in p.backend_choice
    assert len(list((tmp_path / "cache" / "lifelong-monodepth").glob("backend-*.json"))) == 1
    # the flag (--backend) and the environment variable skip the measurement
    assert not measurable({"backend": "torch"}, "cpu") and not measurable({"fast": False}, "cpu")
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert not measurable({}, "cpu")
    monkeypatch.setenv(BACKEND_ENV, "auto")
    assert measurable({}, "cpu") and not measurable({}, "cuda")
    # without measure (the library's default) the table per CPU kind decides, as before
    monkeypatch.setenv(BACKEND_ENV, "torch")
    assert "measured fastest" not in build_predictor(ckpt, RuntimeOptions()).backend_choice


def test_a_measurement_of_a_busy_machine_is_taken_again_once_it_is_idler(tmp_path, monkeypatch):
    cpus = os.cpu_count()
    monkeypatch.setattr(tuning, "load_now", lambda: 2.0 * cpus)  # oversubscribed while measuring
    tuning.choose_measured(run, (64, 96), cands=CANDS, timer=timer, gt=GT, folder=tmp_path)
    saved = json.loads(next(tmp_path.glob("backend-*.json")).read_text())
    assert saved["load"] == 2.0 * cpus and saved["cpus"] == cpus
    calls = []
    counting = lambda b, p: calls.append((b, p)) or run(b, p)  # noqa: E731
    tuning.choose_measured(counting, (64, 96), cands=CANDS, timer=timer, gt=GT, folder=tmp_path)
    assert calls == []  # still as busy: the cached answer
    monkeypatch.setattr(tuning, "load_now", lambda: 0.2 * cpus)  # the machine has calmed down
    c = tuning.choose_measured(counting, (64, 96), cands=CANDS, timer=timer, gt=GT, folder=tmp_path)
    assert len(calls) == len(CANDS) and not c["cached"]
    assert tuning.choose_measured(counting, (64, 96), cands=CANDS, timer=timer, gt=GT, folder=tmp_path)["cached"]
    # the rule itself: busy then, less than half as busy now
    assert tuning.stale_load(4.0, 2, load=1.0) and not tuning.stale_load(4.0, 2, load=3.0)
    assert not tuning.stale_load(2.0, 2, load=0.1) and not tuning.stale_load(None, 2, load=0.1)
