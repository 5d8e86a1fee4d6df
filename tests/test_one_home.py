"""One home for each fact and each rule (issue 16): the pooled selection rule lives in
inference/prototypes.py only (the ONNX graph of export.py runs that very code), --device/--amp are declared
in cli/options.py only, and an emulated bf16 training autocast is announced.
"""
import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from engine import processes
from cli import train as train_cli
from inference.export import OnnxDepth
from models import hardware
from models.runtimes import onnx_bytes
from inference.prototypes import pooled_descriptor, pooled_distances, select_domain

ROOT = Path(__file__).resolve().parents[1]
HEADS = 4


class FeatureNet(nn.Module):
    """Stands in for the network in OnnxDepth: the input *is* the fused feature map (so selection
    can be fed random features), and head i answers a depth of i everywhere."""

    num_domains = HEADS

    def features(self, x):
        return x

    def head_forward(self, feats, i: int, with_uncertainty: bool = True):
        depth = torch.zeros_like(feats[:, :1]) + float(i)
        return depth, (depth if with_uncertainty else None)


def random_features(n=24, c=8, seed=0):
    """Feature maps of mixed per-channel means *and* spreads, so that the mean and the std halves
    of the descriptor both decide some choices, and prototypes near some of them."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(n, c, 1, 1, generator=g) * 3
    offset = torch.randn(n, c, 1, 1, generator=g)
    feats = torch.randn(n, c, 6, 10, generator=g) * scale + offset
    protos = pooled_descriptor(feats[:HEADS]) + 0.3 * torch.randn(HEADS, 2 * c, generator=g)
    return feats, protos


def test_onnx_graph_selects_as_prototypes_select_domain():
    feats, protos = random_features()
    ref = select_domain(feats, {"pooled": protos}, "pooled")
    assert len(set(ref.tolist())) == HEADS  # every head is chosen by some image: a real test
    model = OnnxDepth(FeatureNet(), protos, fixed=-1, with_uncertainty=False).eval()
    with torch.no_grad():
        depth, domain = model(feats)
    assert domain.tolist() == ref.tolist()
    assert depth[:, 0, 0, 0].tolist() == ref.float().tolist()  # each image gets its chosen head
    ort = pytest.importorskip("onnxruntime")  # pinned in requirements.txt
    graph = onnx_bytes(model, feats[:2, :, :4, :6], "image", ["depth", "domain"])  # sizes are dynamic
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    depth, domain = session.run(None, {"image": feats.numpy()})
    assert domain.tolist() == ref.tolist()


@pytest.mark.parametrize("b,d", [(3, 4), (40, 30)])  # cdist takes a matrix-product path above 25 rows
def test_pooled_distances_equal_cdist(b, d):
    g = torch.Generator().manual_seed(b)
    desc = torch.randn(b, 128, generator=g) * 2 + 1
    protos = torch.randn(d, 128, generator=g) * 2 + 1
    ref = torch.cdist(desc, protos)
    torch.testing.assert_close(pooled_distances(desc, protos), ref, rtol=1e-5, atol=1e-5)
    scripted = torch.jit.script(pooled_distances)  # export._Selector scripts it
    torch.testing.assert_close(scripted(desc, protos), ref, rtol=1e-5, atol=1e-5)


def test_emulated_bf16_training_is_announced(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(hardware, "bf16_native", lambda: False)
    line = processes.amp_warning("bf16", cpu)
    assert line.startswith("warning: ") and "\n" not in line
    assert "no native bf16" in line and "emulated" in line and "slower than float32" in line
    assert [processes.amp_warning(a, cpu) for a in ("auto", "off", "fp16")] == [None] * 3
    assert processes.amp_warning("bf16", torch.device("cuda")) is None  # a GPU: no CPU probe
    monkeypatch.setattr(hardware, "bf16_native", lambda: True)
    assert processes.amp_warning("bf16", cpu) is None


def test_a_stage_prints_the_bf16_warning_at_start(monkeypatch, tmp_path, capsys):
    """The engine prints it once before anything else can fail (here: a missing data root)."""
    monkeypatch.setattr(hardware, "bf16_native", lambda: False)
    argv = ["--data-root", str(tmp_path / "missing"), "--runs-dir", str(tmp_path / "runs"),
            "--device", "cpu", "--amp", "bf16"]
    with pytest.raises(SystemExit, match="does not exist"):
        train_cli.main("N", "test", argv)
    warned = [line for line in capsys.readouterr().err.splitlines() if "no native bf16" in line]
    assert len(warned) == 1 and warned[0] == processes.amp_warning("bf16", torch.device("cpu"))


def declared_options(path: Path):
    """(line, option) of every add_argument("--device" | "--amp", ...) call in ``path``."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument" and \
                node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value in ("--device", "--amp"):
            yield node.lineno, node.args[0].value


def test_device_and_amp_are_declared_in_options_only():
    """Commands take them from options.add_device_argument / add_training_precision_argument (choices and
    default in one place). bench/ is left out: its scripts take a plain cpu/cuda device, no auto."""
    files = sorted(ROOT.glob("*.py")) + [f for pkg in ("models", "study", "data", "engine", "inference",
                                                        "evaluation", "cli") for f in sorted((ROOT / pkg).glob("*.py"))]
    found = [f"{p.relative_to(ROOT)}:{line} {opt}" for p in files if p != ROOT / "cli" / "options.py"
             for line, opt in declared_options(p)]
    assert not found, f"declare these with options.add_device_argument / add_older_amp_argument: {found}"
    assert sorted(opt for _, opt in declared_options(ROOT / "cli" / "options.py")) == ["--amp", "--device"]


def project_definitions():
    """(name, "file:line") of every class and function defined at module level in the project's code."""
    files = sorted(ROOT.glob("*.py")) + [f for pkg in ("base", "models", "study", "data", "engine", "inference",
                                                        "evaluation", "cli", "bench") for f in sorted((ROOT / pkg).glob("*.py"))]
    for p in files:
        for node in ast.parse(p.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                yield node.name, f"{p.relative_to(ROOT)}:{node.lineno}"


def test_names_of_issue_41_have_one_definition():
    """``resolve_device`` was defined in engine/processes.py and again in cli/options.py; ``Camera``
    named three classes (a domain's sensor, a pinhole at one image size, the renderer's posed
    camera): now each name has one definition, and the three things have their own names."""
    where = {}
    for name, at in project_definitions():
        where.setdefault(name, []).append(at)
    for name in ("resolve_device", "Intrinsics", "Sensor", "RenderCamera"):
        assert len(where.get(name, [])) == 1, f"{name}: {where.get(name)}"
    assert "Camera" not in where, where["Camera"]
