"""The explorer as a stand-alone page: Voilà serves it, headless Chromium drives it.

The test serves `notebooks/explorer_app.ipynb` for a synthetic run folder on a free localhost
port (the same command as `python -m anomaly explore`), then, through Playwright and Debian's
Chromium (`scripts/install_browser.sh`): moves the threshold slider with the keyboard, checks
that the confusion matrix follows, jumps to the cost optimum, saves the threshold into the run
folder, and takes a screenshot. With ANOMALY_SCREENSHOT set, the screenshot of the explorer is
also written to docs/explorer.png (or to the path the variable names, if it ends in .png).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
BUDGET_S = 240  # everything: server start, kernel start (imports torch), clicks
REPO = Path(__file__).resolve().parent.parent
# True once the confusion matrix's header names threshold v (to the readout's 4 digits).
SHOWS_THRESHOLD = """v => {
    const m = document.querySelector('.anomaly-confusion')?.innerText
        .match(/threshold\\s+([-+0-9.e]+)/);
    return Boolean(m) && Math.abs(parseFloat(m[1]) - v) <= 1e-3 * Math.max(1, Math.abs(v));
}"""


def make_run(folder: Path, n: int = 36, size: int = 64, seed: int = 0) -> Path:
    """A run folder with cookie-like images, masks, anomaly maps and predictions.npz."""
    from PIL import Image

    from anomaly.detectors.base import Predictions

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cookie = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.38 * size) ** 2
    paths, labels, defects, scores, maps, masks = [], [], [], [], [], []
    for i in range(n):
        label = int(i % 3 == 0)
        img = np.full((size, size, 3), 60.0)
        img[cookie] = (205, 160, 100)
        img += rng.normal(0, 6, img.shape)
        mask = np.zeros((size, size), np.uint8)
        amap = rng.random((size, size)).astype(np.float32) * rng.uniform(0.2, 0.45)
        if label:
            cy, cx = rng.integers(int(0.3 * size), int(0.7 * size), 2)
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < (0.08 * size) ** 2).astype(np.uint8)
            img[mask > 0] = (80, 45, 25)
            amap += mask * rng.uniform(0.05, 0.6)
        path = folder / "images" / f"{'crack' if label else 'good'}_{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)
        paths.append(str(path))
        labels.append(label)
        defects.append("crack" if label else "good")
        scores.append(float(amap.max()))
        maps.append(amap)
        masks.append(mask)
    Predictions(paths, np.array(labels), defects, np.array(scores), np.stack(maps),
                np.stack(masks), method="autoencoder").save(folder / "predictions.npz")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"voila exited with code {proc.returncode} before serving")
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"voila did not listen on port {port} in time")


def stop(proc: subprocess.Popen) -> None:
    """Stop the voila server we started (its process group; its kernel shuts down with it)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def ms_left(deadline: float) -> float:
    return max(1000.0, (deadline - time.monotonic()) * 1000)


def screenshot_target() -> Path | None:
    value = os.environ.get("ANOMALY_SCREENSHOT", "").strip()
    if not value or value.lower() in ("0", "false", "no"):
        return None
    return Path(value) if value.endswith(".png") else REPO / "docs" / "explorer.png"


def test_explorer_page_in_headless_chromium(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: run scripts/install_browser.sh (apt-get install "
                    "chromium) to run the browser test")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    pytest.importorskip("voila", reason="voila is not installed")
    from anomaly.explorer import voila_command

    run = make_run(tmp_path / "run")
    n_defective = 12
    port = free_port()
    cmd, env = voila_command([run], port=port)
    log_path = tmp_path / "voila.log"
    deadline = time.monotonic() + BUDGET_S
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    page = None
    try:
        wait_for_port(port, proc, min(deadline, time.monotonic() + 90))
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                         timeout=60_000)
            try:
                page = browser.new_page(viewport={"width": 1100, "height": 1300})
                page.goto(f"http://127.0.0.1:{port}/", timeout=ms_left(deadline))
                table = page.locator(".anomaly-confusion")
                table.wait_for(timeout=ms_left(deadline))
                initial = table.inner_text()

                # Move the threshold slider with the keyboard on its focused handle.
                handle = page.locator(".anomaly-threshold-slider .noUi-handle")
                readout = page.locator(".anomaly-threshold-slider .widget-readout")
                start_value = float(readout.inner_text())
                handle.focus()
                for _ in range(3):
                    handle.press("ArrowRight")
                moved = float(readout.inner_text())
                assert moved > start_value, "arrow keys did not move the slider"
                # The kernel recomputed: the matrix names the new threshold.
                page.wait_for_function(SHOWS_THRESHOLD, arg=moved, timeout=ms_left(deadline))
                assert table.inner_text() != initial

                # End: the highest threshold, nothing flagged, every defective part escapes.
                handle.press("End")
                page.wait_for_function(
                    "t => document.querySelector('.anomaly-confusion').innerText.includes(t)",
                    arg=f"{n_defective} escapes", timeout=ms_left(deadline))
                assert "0 caught" in table.inner_text()

                # Back to the cost optimum, where the page started (the run has no saved
                # threshold), then save it into the run folder.
                page.get_by_role("button", name="Go to cost optimum").click()
                page.wait_for_function(
                    "t => document.querySelector('.anomaly-confusion').innerText === t",
                    arg=initial, timeout=ms_left(deadline))
                page.locator(".anomaly-save").click()
                page.wait_for_function(
                    "() => document.querySelector('.anomaly-status').innerText.includes('Saved')",
                    timeout=ms_left(deadline))
                saved = json.loads((run / "threshold.json").read_text())
                assert saved["rule"] == "cost-optimal"
                shown = table.inner_text().split("\n")[0]
                assert f"threshold {saved['value']:.4g}" in shown

                page.wait_for_timeout(500)  # let the gallery images arrive
                page.screenshot(path=str(tmp_path / "explorer_page.png"), full_page=True)
                shot = tmp_path / "explorer.png"
                page.locator(".anomaly-explorer").screenshot(path=str(shot))
                assert shot.stat().st_size > 10_000
                target = screenshot_target()
                if target is not None:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(shot, target)
                print(f"\nscreenshot: {shot}" + (f" -> {target}" if target else ""))
            except Exception:
                if page is not None:
                    page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                raise
            finally:
                browser.close()
    except Exception as err:
        stop(proc)
        tail = log_path.read_text()[-3000:]
        raise AssertionError(f"{type(err).__name__}: {err}\n--- voila log (tail) ---\n{tail}\n"
                             f"(screenshots in {tmp_path})") from err
    finally:
        stop(proc)
