"""demo.py: the model side on its own, then the page served for real and driven in a headless
Chromium (Debian's ``chromium``): click a bundled example, predict, check the depth image and the
chosen domain, force another head; a screenshot is kept as the test artefact.

The web demo is the project's one optional extra (README, Set-up: ``requirements-demo.txt`` and
``apt-get install chromium``). Where it is not installed, the page test skips and names what is
missing; under ``LMD_REQUIRE_EXTRAS=1`` (set by .ci/run, which installs the extra) it fails instead."""
import io
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli import demo as D
from inference import images
from helpers import ROOT, make_checkpoint, make_data_root, torch_threads

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
REQUIRE_EXTRAS = os.environ.get("LMD_REQUIRE_EXTRAS") == "1"


def missing_demo_extra():
    """What the page test needs and this machine lacks (None: all there)."""
    import importlib.util
    missing = [f"{name} (pip install -r requirements-demo.txt)" for name in ("gradio", "playwright")
               if importlib.util.find_spec(name) is None]
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    return ", ".join(missing) or None


def require_demo_extra():
    missing = missing_demo_extra()
    if missing:
        message = f"the web demo's optional extra is not installed: {missing}"
        if REQUIRE_EXTRAS:
            pytest.fail(message + " (LMD_REQUIRE_EXTRAS=1: every extra must be there)")
        pytest.skip(message)
EXAMPLE = ROOT / "docs" / "examples" / "nyu_like.jpg"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = make_data_root(tmp_path_factory.mktemp("data"), n_train=3, n_test=1, n_replay=3)
    path = tmp_path_factory.mktemp("ckpt") / "NKS.pth.tar"
    make_checkpoint(path, "NKS", scale=0.25, prototypes="replay", data_root=root)
    return path


def demo_args(ckpt, tmp_path, *extra):
    return D.build_parser().parse_args(["--checkpoint", str(ckpt), "--runs-dir", str(tmp_path), *extra])


def test_infer_matches_predict_and_forces_a_head(ckpt, tmp_path):
    args = demo_args(ckpt, tmp_path, "--device", "cpu")
    models = D.Models(args)
    img = Image.open(EXAMPLE).convert("RGB")
    with torch_threads(1):
        auto = D.infer(models, img, str(ckpt), D.AUTO, tmp_path / "w")
        ref = models.get(str(ckpt)).run(img)
        forced = D.infer(models, img, str(ckpt), "kitti (K)", tmp_path / "w")
    assert auto["head"] == ref["head"]
    assert np.allclose(auto["distances"], ref["distances"].numpy())
    name = ("nyu", "kitti", "scannet")[auto["head"]]
    assert auto["domain"].startswith(f"{name} ({'NKS'[auto['head']]}), nearest prototype")
    assert Image.open(auto["depth"]).size[0] > img.size[0]  # the depth image carries its colour bar
    assert forced["head"] == 1 and forced["domain"].startswith("kitti (K), forced")
    assert forced["distances"] == auto["distances"]  # shown for every head choice
    chart = np.asarray(auto["chart"])
    assert chart.shape[2] == 3 and (np.abs(chart.astype(int) - [255, 127, 14]).sum(axis=2) < 30).any()  # orange bar


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ckpt, tmp_path_factory):
    require_demo_extra()
    port = free_port()
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, str(ROOT / "demo.py"), "--checkpoint", str(ckpt), "--port",
                                 str(port), "--runs-dir", str(ckpt.parent), "--device", "cpu"],
                                cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        import urllib.request
        deadline = time.time() + 90  # importing Gradio takes a while on a busy CPU
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read(100)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"demo.py did not serve {url}:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_page_in_headless_chromium(server, ckpt, tmp_path):
    from playwright.sync_api import sync_playwright
    expected = images.Predictor(ckpt, device="cpu").run(Image.open(EXAMPLE).convert("RGB"))
    letter = "NKS"[expected["head"]]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(server, wait_until="domcontentloaded")
            page.locator("#examples button.gallery-item", has=page.locator("img[src*='nyu_like']")).click()
            page.wait_for_selector("#input img", timeout=20000)  # the example is loaded into the input
            page.click("#run")
            domain = page.locator("#domain textarea")
            page.wait_for_function(
                "() => { const t = document.querySelector('#domain textarea'); return t && t.value.length > 0 }",
                timeout=30000)
            page.wait_for_function(
                "() => { const i = document.querySelector('#depth img'); return i && i.complete && i.naturalWidth > 0 }",
                timeout=30000)
            text = domain.input_value()
            assert re.match(rf"\w+ \({letter}\), nearest prototype; depth [\d.]+-[\d.]+ m", text), text
            src = page.locator("#depth img").get_attribute("src")
            body = page.request.get(src).body()
            shown = Image.open(io.BytesIO(body))
            assert shown.size[0] > 320 and np.asarray(shown.convert("RGB")).std() > 5  # a real picture
            page.wait_for_function(
                "() => { const i = document.querySelector('#distances img'); return i && i.naturalWidth > 0 }",
                timeout=30000)
            page.screenshot(path=str(tmp_path / "demo_page.png"), full_page=True)
            # force the KITTI head: the text says so and still names the nearest prototype
            page.locator("#head label", has_text="kitti (K)").click()
            page.click("#run")
            page.wait_for_function(
                "() => document.querySelector('#domain textarea').value.startsWith('kitti (K), forced')",
                timeout=30000)
            page.screenshot(path=str(tmp_path / "demo_page_forced.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "demo_page.png").stat().st_size > 10000
    print(f"screenshots: {tmp_path / 'demo_page.png'}, {tmp_path / 'demo_page_forced.png'}")


def test_a_missing_extra_skips_with_its_name_or_fails_in_ci(monkeypatch):
    """The page test's guard: the skip names the package and its install command; CI fails."""
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setattr(sys.modules[__name__], "REQUIRE_EXTRAS", False)
    with pytest.raises(pytest.skip.Exception, match=r"/nonexistent/chromium \(apt-get install chromium\)"):
        require_demo_extra()
    monkeypatch.setattr(sys.modules[__name__], "REQUIRE_EXTRAS", True)
    with pytest.raises(pytest.fail.Exception, match="LMD_REQUIRE_EXTRAS=1"):
        require_demo_extra()
