"""Every pointer a user is given resolves: links and section anchors in README.md and docs/, README
sections and docs files named in the code's help and messages, and each ``script.py --option`` named
in the docs or in a message exists in that script's ``--help``.

The texts are read as files (nothing is imported); the options come from each script's own
``--help``, run once for all scripts in one interpreter.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").glob("*.md")])
DOCS = [d for d in DOCS if d.exists()]
CODE = sorted(p for p in ROOT.rglob("*.py") if ".git" not in p.parts and "tests" not in p.parts)
SCRIPTS = sorted(p.name for p in ROOT.glob("*.py")) + sorted(f"bench/{p.name}" for p in (ROOT / "bench").glob("*.py"))

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$", re.M)
# "README 'Section'" / README: "Section" / README's "Section" in help texts and messages
README_SECTION = re.compile(r"README(?:'s)?:?\s+['\"]([^'\"]+)['\"]")
DOC_FILE = re.compile(r"\b((?:docs|bench)/[\w.-]+\.md)(#[\w-]+)?")
SCRIPT_USE = re.compile(r"(?<![\w/.])((?:bench/)?\w+\.py)\b([^`'\"|;&()\n]*)")
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def headings(path: Path) -> set:
    return {slug(h) for h in HEADING.findall(path.read_text(encoding="utf-8"))}


def titles(path: Path) -> set:
    return {h.strip() for h in HEADING.findall(path.read_text(encoding="utf-8"))}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_anchors_resolve(doc):
    bad = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):  # a web address: not checked here (no network)
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            bad.append(f"{target}: no file {path}")
        elif anchor and file.suffix == ".md" and anchor not in headings(file):
            bad.append(f"{target}: no section #{anchor} in {file.relative_to(ROOT)}")
    assert not bad, f"{doc.relative_to(ROOT)}: " + "; ".join(bad)


def test_readme_sections_and_doc_files_named_in_the_code_exist():
    readme = titles(ROOT / "README.md")
    bad = []
    for path in CODE + DOCS:
        text = path.read_text(encoding="utf-8")
        for section in README_SECTION.findall(text):
            if section not in readme:
                bad.append(f"{path.relative_to(ROOT)}: README section {section!r}")
        for name, anchor in DOC_FILE.findall(text):
            file = ROOT / name
            if not file.exists():
                bad.append(f"{path.relative_to(ROOT)}: {name}")
            elif anchor and anchor[1:] not in headings(file):
                bad.append(f"{path.relative_to(ROOT)}: {name}{anchor}")
    assert not bad, "pointers to nowhere: " + "; ".join(bad)


def sub_commands():
    """(script, word) for every ``script.py word --option`` named anywhere: a command's sub-command."""
    pairs = set()
    for path in CODE + DOCS:
        for line in path.read_text(encoding="utf-8").splitlines():
            for script, rest in SCRIPT_USE.findall(line):
                word = rest.split()[0] if rest.split() else ""
                if script in SCRIPTS and re.fullmatch(r"[a-z][a-z_0-9]*", word) and OPTION.search(rest):
                    pairs.add((script, word))
    return sorted(pairs)


@pytest.fixture(scope="module")
def script_help():
    """{script: its --help text, "script word": a sub-command's}, every root script and benchmark in
    one interpreter."""
    runs = [[name] for name in SCRIPTS] + [[name, word] for name, word in sub_commands()]
    driver = (
        "import contextlib, io, json, runpy, sys\n"
        "out = {}\n"
        f"for words in {runs!r}:\n"
        "    sys.argv = words + ['--help']\n"
        "    buf = io.StringIO()\n"
        "    code = 0\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):\n"
        "            runpy.run_path(words[0], run_name='__main__')\n"
        "    except SystemExit as e:\n"
        "        code = e.code or 0\n"
        "    if code == 0:\n"
        "        out[' '.join(words)] = buf.getvalue()\n"
        "print(json.dumps(out))\n")
    done = subprocess.run([sys.executable, "-c", driver], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def option_uses(text: str):
    """(script, option, first word) for every ``script.py [word] ... --option`` on one line of ``text``."""
    for line in text.splitlines():
        for script, rest in SCRIPT_USE.findall(line):
            word = rest.split()[0] if rest.split() else ""
            for option in OPTION.findall(rest):
                yield script, option, word


def test_options_named_in_docs_and_messages_exist(script_help):
    bad = set()
    for path in CODE + DOCS:
        if path.name == "PROTOCOL.md":  # it quotes the authors' own scripts, not ours
            continue
        for script, option, word in option_uses(path.read_text(encoding="utf-8")):
            help_text = script_help.get(f"{script} {word}", script_help.get(script))
            if help_text is None or option == "--help":
                continue
            if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text):
                bad.add(f"{path.relative_to(ROOT)}: {script} {option}")
    assert not bad, "options that do not exist: " + "; ".join(sorted(bad))


def test_the_checker_sees_a_missing_option(script_help):
    """The reader finds an option after positional arguments, and the check would flag a wrong one."""
    uses = list(option_uses("run `python predict.py photos/ --checkpoint a.pth --no-such-flag` then"))
    assert uses == [("predict.py", "--checkpoint", "photos/"), ("predict.py", "--no-such-flag", "photos/")]
    assert "--checkpoint" in script_help["predict.py"] and "--no-such-flag" not in script_help["predict.py"]
    assert slug("Uncertainty in metres") == "uncertainty-in-metres"
    assert slug("The main job: `python quickstart.py`") == "the-main-job-python-quickstartpy"


def test_no_merge_conflict_markers_are_left_in_the_tree():
    """A merge's conflict markers in a doc or a module are text nobody meant to ship."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    marker = re.compile(r"^(<{7} |>{7} |={7}$)", re.M)
    left = [name for name in tracked if name.endswith((".py", ".md", ".txt", ".sh", ".ini", ".cfg", ".toml"))
            and (ROOT / name).exists() and marker.search((ROOT / name).read_text(encoding="utf-8", errors="replace"))]
    assert not left, f"conflict markers in {left}"
