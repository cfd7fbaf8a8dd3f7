"""TensorBoard as a new user opens it: a headless Chromium on a sweep's TensorBoard, three tabs, screenshots.

Needs Debian's `chromium` and the `browser` extra (Playwright, driving that Chromium); skipped without them:

    sudo apt-get install chromium && .venv/bin/pip install -e '.[browser]'
    ROBUSTLAB_SCREENSHOTS=docs/images .venv/bin/python -m pytest -m slow tests/test_tensorboard_browser.py

With ROBUSTLAB_SCREENSHOTS set, the screenshots are also written there (the README's come from this test), and
the sweep is a real one: Fashion-MNIST, three defenses, two epochs, so the images show garments, their
adversarial versions and perturbations, and the curves real trainings. Without it, a tiny synthetic sweep of
the whole zoo checks the same tabs in a few minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import run_script

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tensorboard_browser")]  # one worker runs the module
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ZOO = (Path(__file__).parents[1] / "conf" / "sweep" / "zoo.yaml").read_text().split("defense: ")[1].split()[0]
REAL = bool(os.environ.get("ROBUSTLAB_SCREENSHOTS"))
DEFENSES = "none,adv_train,noise_injection" if REAL else ZOO
SWEEP = ["-m", "sweep=matrix", f"hydra.sweeper.params.defense='{DEFENSES}'",
         *(["trainer.max_epochs=2", "eval.n_samples=200"] if REAL else
           ["dataset=synthetic", "trainer.max_epochs=4", "eval.n_samples=64"]),
         "eval.audit.n_samples=32", "eval.audit.square_queries=100", "eval.attacks.apgd_ce.steps=20",
         "eval.attacks.square.queries=200", "eval.attacks.a3.steps=10",
         "eval.attacks.a3.target_steps=10"]


@pytest.fixture(scope="module")
def browser_page():
    if CHROMIUM is None:
        pytest.skip("no chromium (Debian: apt-get install chromium)")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="the browser extra: pip install -e '.[browser]'")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser.new_page(viewport={"width": 1600, "height": 1000})
        browser.close()


@pytest.fixture(scope="module")
def tensorboard(tmp_path_factory):
    """`python train.py sweep=matrix` (SWEEP), and `tensorboard --logdir tensorboard` in its output root."""
    root = tmp_path_factory.mktemp("browser")
    result = run_script("train.py", *SWEEP, output_root=root, timeout=1800)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    records = [json.loads(path.read_text()) for path in (root / "sweeps" / "matrix").rglob("metrics.json")]
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    # Started in the output root with a relative logdir: the page shows `tensorboard`, no machine path.
    server = subprocess.Popen([Path(sys.executable).parent / "tensorboard", "--logdir", "tensorboard",
                               "--port", str(port), "--host", "localhost"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root)
    url = f"http://localhost:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if json.loads(urllib.request.urlopen(f"{url}/data/runs", timeout=5).read()):
                break
        except OSError:
            time.sleep(1)
    yield url, records
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    directory = Path(os.environ.get("ROBUSTLAB_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def show(page, url: str, tab: str, texts: list[str], path: Path) -> None:
    """Open a tab (line charts as SVG, which headless Chromium renders), wait until each text is visible, and
    take a screenshot."""
    page.goto(f"{url}/?forceSVG=true#{tab}")
    for text in texts:
        page.locator(f"text={text} >> visible=true").first.wait_for(timeout=60_000)
    page.wait_for_timeout(2000)  # let the charts draw
    page.screenshot(path=str(path))
    assert path.stat().st_size > 10_000


def test_every_run_and_stage_is_named_by_its_run(tensorboard):
    """Stages log below their run (`<defense>/<attack>-<fp>/<stage>`), never under a name of their own."""
    url, records = tensorboard
    runs = json.loads(urllib.request.urlopen(f"{url}/data/runs", timeout=30).read())
    names = {run_name(record) for record in records}
    assert {"/".join(run.split("/")[:2]) for run in runs} == names


def run_name(record: dict) -> str:
    return f"{record['defense']}/{record['attack']}-{record['run_fingerprint']}"


def test_time_series_opens_on_the_learning_curves(browser_page, tensorboard, screenshots):
    url, records = tensorboard
    adversarial = next(record for record in records if record["defense"] == "adv_train")
    show(browser_page, url, "timeseries", [run_name(adversarial), "train/loss", "train/acc"],
         screenshots / "tensorboard-time-series.png")


def test_images_hold_the_labelled_adversarial_examples(browser_page, tensorboard, screenshots):
    url, _ = tensorboard
    show(browser_page, url, "images", ["visual/adversarial_examples/apgd_ce", "visual/adversarial_examples/fgsm"],
         screenshots / "tensorboard-images.png")


def test_hparams_compares_every_cell_of_the_sweep(browser_page, tensorboard, screenshots):
    url, records = tensorboard
    assert sorted(record["defense"] for record in records) == sorted(DEFENSES.split(","))
    show(browser_page, url, "hparams", [run_name(record) for record in records] + ["verdict/accuracy/robust"],
         screenshots / "tensorboard-hparams.png")
