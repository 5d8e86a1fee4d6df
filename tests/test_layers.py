"""The layer table of docs/DESIGN.md holds: every project module imports only its own layer or
layers below it, no module imports an entry script, and nothing loads a project file by path.

Imports are read with ``ast`` (those inside functions too), so the test needs no module to run.
"""
import ast
import subprocess
import sys
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lower numbers are lower layers; a module may import its own layer and the ones below. The table
# is docs/DESIGN.md's (its one copy): each row's backticked module paths, ``pkg/*`` = a package and
# every module in it.
DESIGN = ROOT / "docs" / "DESIGN.md"


def read_layers(text: str) -> dict:
    """{layer: [module names]} of the layer table in ``text`` (DESIGN.md)."""
    layers = {}
    for row in re.findall(r"^\| (\d+)[^|]*\| (.*) \|$", text, re.M):
        names = []
        for token in re.findall(r"`([\w/*]+)`", row[1]):
            if token.endswith("/*"):
                pkg = token[:-2]
                names += [pkg] + [f"{pkg}.{f.stem}" for f in sorted((ROOT / pkg).glob("*.py")) if f.stem != "__init__"]
            elif not token.startswith("__"):  # "the packages' `__init__`" is prose
                names.append(token.strip("/").replace("/", "."))
        layers[int(row[0])] = names
    return layers


LAYERS = read_layers(DESIGN.read_text(encoding="utf-8"))
# Entry scripts: the top; no project module imports them.
SCRIPTS = ["test", "test_inference", "predict", "train_N", "train_NK", "train_NKS", "quickstart", "demo", "add_domain",
           "export", "prepare_data", "synthetic"]
PACKAGES = ("base", "models", "study", "data", "engine", "inference", "evaluation", "cli")
# study.py is the entry script of the study/ package; `import study` is the package (a directory
# package takes precedence over a module of the same name), which test_the_study_name_is_the_package pins.
BENCH = sorted(p.stem for p in (ROOT / "bench").glob("*.py"))
LAYER_OF = {m: k for k, mods in LAYERS.items() for m in mods}
LAYER_OF.update({s: 99 for s in SCRIPTS})
# bench/upstream_eval.py loads the AUTHORS' test.py (an oracle outside this project) by path.
PATH_LOADING_ALLOWED = {"bench/upstream_eval.py"}
# (importlib.import_module of an optional third-party package, e.g. onnxruntime, is an import by name)
PATH_LOADING = re.compile(r"spec_from_file_location|SourceFileLoader|runpy|exec\(")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts
    if parts[0] == "bench":
        return f"bench.{parts[-1]}"
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_files():
    files = sorted(ROOT.glob("*.py")) + [f for pkg in PACKAGES for f in sorted((ROOT / pkg).glob("*.py"))] + \
        sorted((ROOT / "bench").glob("*.py"))
    return [f for f in files if f.name not in ("conftest.py", "study.py")]


def package_of(path: Path) -> str:
    return path.parent.name if path.parent.name in PACKAGES else ""


def project_imports(path: Path, package: str):
    """(line, imported project module) for every import in ``path`` (in ``package``), relative
    imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package if node.level == 1 else ""
                mod = f"{base}.{node.module}" if node.module else base
                names = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in LAYER_OF else mod for a in node.names]
            else:
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in LAYER_OF else node.module
                         for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in LAYER_OF and name not in BENCH:
                name = name.rpartition(".")[0]
            if name:
                yield node.lineno, name


def test_every_project_module_has_a_layer():
    unplaced = [module_name(f) for f in project_files()
                if module_name(f) not in LAYER_OF and not module_name(f).startswith("bench.")]
    assert not unplaced, f"add these modules to the layer table of docs/DESIGN.md: {unplaced}"


@pytest.mark.parametrize("path", project_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_the_layers(path):
    me = module_name(path)
    mine = 100 if me.startswith("bench.") else LAYER_OF[me]
    bad = []
    for line, name in project_imports(path, package_of(path)):
        if name in BENCH:
            if mine != 100:  # the benchmarks share bench_inference's helpers among themselves only
                bad.append(f"line {line}: imports the benchmark script {name}")
        elif name in SCRIPTS:
            bad.append(f"line {line}: imports the entry script {name}.py")
        elif LAYER_OF[name] > mine:
            bad.append(f"line {line}: imports {name} (layer {LAYER_OF[name]}) from layer {mine}")
    assert not bad, f"{path.relative_to(ROOT)}: " + "; ".join(bad)


@pytest.mark.parametrize("path", project_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_file_is_loaded_by_path(path):
    rel = str(path.relative_to(ROOT))
    if rel in PATH_LOADING_ALLOWED:
        return
    text = path.read_text(encoding="utf-8")
    hits = [f"line {i}" for i, line in enumerate(text.splitlines(), 1) if PATH_LOADING.search(line)]
    assert not hits, f"{rel} loads code by path or name at {', '.join(hits)}; import it instead"


def test_the_layer_table_is_design_md_s():
    """The table the checks use is read from docs/DESIGN.md: a row there is a layer here."""
    text = "| layer | modules |\n|---|---|\n| 0 bottom | `base/errors`, `losses` |\n| 3 top | `study/*`, `cli/test` |\n"
    layers = read_layers(text)
    assert layers[0] == ["base.errors", "losses"]
    assert layers[3][0] == "study" and "study.plan" in layers[3] and layers[3][-1] == "cli.test"
    assert LAYER_OF["base.errors"] == 0 and LAYER_OF["cli.demo"] > LAYER_OF["cli.options"] > LAYER_OF["inference.frames"]


def test_the_checker_sees_a_violation(tmp_path):
    """The import reader finds imports inside functions and resolves relative ones."""
    fake = tmp_path / "probe.py"
    fake.write_text("def f():\n    from .fast import x\n    import evaluation\n    from models import fast\n")
    found = sorted(name for _, name in project_imports(fake, "models"))
    assert found == ["evaluation", "models.fast", "models.fast"]


def test_the_study_name_is_the_package():
    """study.py (the entry script) and study/ (the package) share a name: imports get the package."""
    import study
    assert Path(study.__file__).parent.name == "study" and Path(study.__file__).name == "__init__.py"
    text = (ROOT / "study.py").read_text(encoding="utf-8")
    assert "from cli.study import main" in text and len(text.splitlines()) < 25


# The design card: the core files a paper's reader looks for, with their real content, and the entry scripts.
CARD_CORE = {"loaders.py", "losses.py", "metrics.py"}
ENTRY_SCRIPTS = {f"{s}.py" for s in SCRIPTS} | {"study.py"}
ROOT_DIRS = {"base", "models", "data", "engine", "inference", "evaluation", "cli", "study", "bench", "docs", "tests",
             "datasets", "runs"}


def test_the_root_holds_the_card_and_entry_scripts_only():
    """Every other module lives in a package; an entry script is a docstring and a call of a few lines."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    top = {path.split("/")[0] for path in tracked}
    assert {p for p in top if p.endswith(".py")} == CARD_CORE | ENTRY_SCRIPTS
    assert {p for p in top if "." not in p} <= ROOT_DIRS, sorted(top)
    for name in ENTRY_SCRIPTS:
        tree = ast.parse((ROOT / name).read_text(encoding="utf-8"))
        code = [node for node in tree.body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
        assert len(code) <= 4, f"{name}: an entry script holds imports and a call, the logic lives in a package"
        assert any(isinstance(n, ast.If) for n in code), f"{name} runs nothing when imported"


def test_every_entry_script_answers_help():
    """`python <script> --help` of every root script and benchmark, run as a user runs it (one
    interpreter for all)."""
    names = sorted(ENTRY_SCRIPTS) + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "bench").glob("*.py"))
    driver = (
        "import contextlib, io, json, runpy, sys\n"
        "out = {}\n"
        f"for name in {names!r}:\n"
        "    sys.argv = [name, '--help']\n"
        "    buf = io.StringIO()\n"
        "    code = 0\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(buf):\n"
        "            runpy.run_path(name, run_name='__main__')\n"
        "    except SystemExit as e:\n"
        "        code = e.code or 0\n"
        "    out[name] = [code, buf.getvalue()]\n"
        "print(json.dumps(out))\n")
    done = subprocess.run([sys.executable, "-c", driver], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    import json
    for name, (code, text) in json.loads(done.stdout.splitlines()[-1]).items():
        assert code == 0 and text.startswith("usage:") and "--help" in text, (name, code, text[:300])



def imports_argparse(path: Path) -> list:
    """Line numbers of ``import argparse`` / ``from argparse import ...`` in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n.lineno for n in ast.walk(tree)
            if (isinstance(n, ast.Import) and any(a.name == "argparse" for a in n.names))
            or (isinstance(n, ast.ImportFrom) and n.module == "argparse")]


@pytest.mark.parametrize("path", [p for p in project_files() if p.relative_to(ROOT).parts[0] in PACKAGES
                                  and p.relative_to(ROOT).parts[0] != "cli"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_command_line_below_the_commands(path):
    """argparse (parsers, Namespaces) lives in cli/, the entry scripts and bench/ only: the library
    below takes settings objects (issue 41)."""
    hits = imports_argparse(path)
    assert not hits, f"{path.relative_to(ROOT)} imports argparse at line(s) {hits}; parse in cli/"


def test_the_argparse_check_sees_an_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import os\nfrom argparse import Namespace\n")
    assert imports_argparse(f) == [2]
