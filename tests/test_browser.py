"""The explorer as a stand-alone page: Voila serves it, headless Chromium drives it.

One server (the same command as `python -m anomaly explore`, with a token and a short kernel
cull time) serves `notebooks/explorer_app.ipynb` for two synthetic run folders on the same
images. Through Playwright and Debian's Chromium (`scripts/install_browser.sh`) the tests: move
the threshold with the keyboard and watch the confusion matrix follow, jump to the cost
optimum and save it; enlarge a tile, page through every misclassified image, filter by defect
kind, compare the two runs, download the HTML report; check that at 390 px and at 1280 px every
control lies inside the viewport; and reload the page several times to check that the kernels
of closed pages are shut down. Screenshots go to $ANOMALY_SCREENSHOT_DIR (default: the test's
tmp folder); with ANOMALY_SCREENSHOT set, the explorer's picture is also written to
docs/explorer.png (or to the path the variable names, if it ends in .png).
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
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
BUDGET_S = 300  # one test: server start, kernel start (imports torch), clicks
CULL_S = 20  # kernels of closed pages are shut down this long after their last connection
# (shorter risks culling a kernel whose page is still loading on a busy machine)
REPO = Path(__file__).resolve().parent.parent
# True once the confusion matrix's header names threshold v (to the readout's 4 digits).
SHOWS_THRESHOLD = """v => {
    const m = document.querySelector('.anomaly-confusion')?.innerText
        .match(/threshold\\s+([-+0-9.e]+)/);
    return Boolean(m) && Math.abs(parseFloat(m[1]) - v) <= 1e-3 * Math.max(1, Math.abs(v));
}"""


def make_run(
    folder: Path,
    n: int = 36,
    size: int = 64,
    seed: int = 0,
    images: Path | None = None,
    strength: float = 1.0,
) -> Path:
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
            amap += mask * rng.uniform(0.05, 0.6) * strength
        kind = ("crack" if i % 2 else "hole") if label else "good"
        path = (images or folder / "images") / f"{kind}_{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)
        paths.append(str(path))
        labels.append(label)
        defects.append(kind)
        scores.append(float(amap.max()))
        maps.append(amap)
        masks.append(mask)
    folder.mkdir(parents=True, exist_ok=True)
    Predictions(
        paths,
        np.array(labels),
        defects,
        np.array(scores),
        np.stack(maps),
        np.stack(masks),
        method="autoencoder",
        meta={"data": str(images or folder / "images")},  # the explorer reads images from there
    ).save(folder / "predictions.npz")
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


def kernels(server: subprocess.Popen) -> int:
    """How many kernels the voila server runs now (its ipykernel child processes)."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == server.pid and b"ipykernel" in (stat.parent / "cmdline").read_bytes():
                count += 1
        except (OSError, ValueError, IndexError):
            continue
    return count


# Every visible control of the explorer whose box sticks out of the viewport, by class names.
OUTSIDE = """() => {
    const sel = 'button, input, select, .noUi-handle, .widget-readout, .anomaly-confusion table,'
              + ' .anomaly-tile img, .anomaly-histogram';
    const out = [];
    for (const el of document.querySelectorAll('.anomaly-explorer ' + sel.split(',').join(
            ', .anomaly-explorer '))) {
        if (!el.offsetParent) continue;  // not displayed
        const r = el.getBoundingClientRect();
        if (r.width === 0) continue;
        if (r.left < -1 || r.right > window.innerWidth + 1)
            out.push(`${el.tagName}.${el.className} [${Math.round(r.left)}, ${Math.round(r.right)}]`);
    }
    return out;
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"{CHROMIUM} is missing: run scripts/install_browser.sh (apt-get install "
            "chromium) to run the browser test"
        )
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    pytest.importorskip("voila", reason="voila is not installed")
    from anomaly.explorer.server import page_url, voila_command

    root = tmp_path_factory.mktemp("explorer")
    shared = root / "images"
    runs = [
        make_run(root / "run-a", images=shared),
        make_run(root / "run-b", images=shared, strength=2.5),
    ]
    port = free_port()
    cmd, env = voila_command(runs, port=port, cull_idle_s=CULL_S)
    log_path = root / "voila.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for_port(port, proc, time.monotonic() + 90)
        shots = Path(os.environ.get("ANOMALY_SCREENSHOT_DIR") or root)
        shots.mkdir(parents=True, exist_ok=True)
        yield {"url": page_url(cmd), "runs": runs, "proc": proc, "log": log_path, "shots": shots}
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield b
        finally:
            b.close()


def open_page(browser, server, width: int, height: int = 1000, deadline: float | None = None):
    deadline = deadline or time.monotonic() + BUDGET_S
    page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=2)
    page.goto(server["url"], timeout=ms_left(deadline))
    page.locator(".anomaly-confusion").wait_for(timeout=ms_left(deadline))
    return page


def fail_with_log(server, page, err: Exception, name: str):
    if page is not None:
        page.screenshot(path=str(server["shots"] / f"failure_{name}.png"), full_page=True)
    tail = server["log"].read_text()[-3000:]
    raise AssertionError(
        f"{type(err).__name__}: {err}\n--- voila log (tail) ---\n{tail}\n"
        f"(screenshots in {server['shots']})"
    ) from err


def test_threshold_save_zoom_paging_filter_compare_report(server, browser):
    run = server["runs"][0]
    n_defective = 12
    deadline = time.monotonic() + BUDGET_S
    page = None
    try:
        page = open_page(browser, server, 1280, 1300, deadline)
        table = page.locator(".anomaly-confusion")
        initial = table.inner_text()
        wait = {"timeout": ms_left(deadline)}

        # The threshold slider, moved with the keyboard on its focused handle.
        handle = page.locator(".anomaly-threshold-slider .noUi-handle")
        readout = page.locator(".anomaly-threshold-slider .widget-readout")
        start_value = float(readout.inner_text())
        handle.focus()
        for _ in range(3):
            handle.press("ArrowRight")
        moved = float(readout.inner_text())
        assert moved > start_value, "arrow keys did not move the slider"
        page.wait_for_function(SHOWS_THRESHOLD, arg=moved, **wait)
        assert table.inner_text() != initial
        handle.press("End")  # nothing flagged: every defective part escapes
        page.wait_for_function(
            "t => document.querySelector('.anomaly-confusion').innerText.includes(t)",
            arg=f"{n_defective} escapes",
            **wait,
        )
        assert "0 caught" in table.inner_text()

        # Back to the cost optimum (no saved threshold: where the page started), and save it.
        page.get_by_role("button", name="Go to cost optimum").click()
        page.wait_for_function(
            "t => document.querySelector('.anomaly-confusion').innerText === t", arg=initial, **wait
        )
        page.locator(".anomaly-save").click()
        page.wait_for_function(
            "() => document.querySelector('.anomaly-status').innerText.includes('Saved')", **wait
        )
        saved = json.loads((run / "threshold.json").read_text())
        assert saved["rule"] == "cost-optimal"
        assert f"threshold {saved['value']:.4g}" in table.inner_text().split("\n")[0]
        page.wait_for_function(
            "() => document.querySelector('.anomaly-rule').innerText.includes('saved rule')", **wait
        )

        # Every misclassified image, page by page: show all, so that there are several pages.
        page.locator(".anomaly-show select").select_option(label="all images")
        label = page.locator(".anomaly-page")
        page.wait_for_function(
            "() => /of 36 /.test(document.querySelector('.anomaly-page').innerText)", **wait
        )
        first_page = label.inner_text()
        assert first_page.startswith("1") and "page 1/3" in first_page
        page.locator(".anomaly-next").click()
        page.wait_for_function(
            "() => document.querySelector('.anomaly-page').innerText.includes('page 2/3')", **wait
        )
        assert label.inner_text().startswith("13")

        # Filter by defect kind: only holes.
        page.locator(".anomaly-kind select").select_option(label="hole")
        page.wait_for_function(
            "() => /of 6 /.test(document.querySelector('.anomaly-page').innerText)", **wait
        )
        # the page label changes before every tile has been redrawn: wait for the tiles too
        page.wait_for_function(
            "() => [...document.querySelectorAll('.anomaly-tile')]"
            ".filter(t => /hole/i.test(t.innerText)).length >= 6",
            **wait,
        )
        captions = page.locator(".anomaly-tile").filter(has_text="hole")
        assert captions.count() == 6

        # Enlarge a tile: image, evidence and mask side by side.
        page.locator(".anomaly-zoom-0").click()
        zoom = page.locator(".anomaly-zoom")
        zoom.wait_for(state="visible", **wait)
        page.wait_for_function(
            "() => document.querySelectorAll('.anomaly-zoom img').length === 3", **wait
        )
        assert "hole" in page.locator(".anomaly-zoom-title").inner_text()
        page.screenshot(path=str(server["shots"] / "zoom.png"), full_page=False)
        page.locator(".anomaly-zoom-close").click()
        zoom.wait_for(state="hidden", **wait)

        # Compare with the second run on the same images.
        page.locator(".anomaly-compare select").select_option(label="run-b (autoencoder)")
        page.wait_for_function(
            "() => document.querySelector('.anomaly-gallery-title').innerText"
            ".includes('Compared with')",
            **wait,
        )
        assert "run-b: " in page.locator(".anomaly-tile").first.inner_text()

        # The report: a self-contained HTML file, downloaded from the page.
        page.locator(".anomaly-report").click()
        link = page.locator(".anomaly-report-link a")
        link.wait_for(**wait)
        with page.expect_download(**wait) as info:
            link.click()
        report = Path(info.value.path()).read_text()
        assert report.startswith("<!DOCTYPE html>") and f"{saved['value']:.6g}" in report
        assert "<svg" in report and "Misclassified images" in report
        assert (run / "report.html").exists()

        page.locator(".anomaly-show select").select_option(label="misclassified")
        page.locator(".anomaly-kind select").select_option(label="all kinds")
        page.wait_for_timeout(800)  # let the gallery images arrive
        shot = server["shots"] / "explorer.png"
        page.locator(".anomaly-explorer").screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
        target = screenshot_target()
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, target)
        print(f"\nscreenshot: {shot}" + (f" -> {target}" if target else ""))
    except Exception as err:  # noqa: BLE001 - reported with the server's log
        fail_with_log(server, page, err, "flow")
    finally:
        if page is not None:
            page.close()


@pytest.mark.parametrize("width", [390, 1280])
def test_every_control_is_inside_the_viewport(server, browser, width):
    page = None
    try:
        page = open_page(browser, server, width, 900)
        page.wait_for_timeout(800)
        outside = page.evaluate(OUTSIDE)
        page.screenshot(path=str(server["shots"] / f"layout_{width}.png"), full_page=True)
        assert outside == [], f"at {width} px these stick out of the viewport: {outside}"
        scroll = page.evaluate("() => document.documentElement.scrollWidth")
        assert scroll <= width + 1, f"the page scrolls sideways at {width} px ({scroll} px wide)"
        # Crisp plots: the histogram PNG has at least 2 pixels per CSS pixel.
        ratio = page.evaluate("""() => {
            const img = document.querySelector('.anomaly-histogram');
            return img.naturalWidth / img.getBoundingClientRect().width; }""")
        assert ratio >= 1.9, f"histogram at {ratio:.2f} pixels per CSS pixel"
    except Exception as err:  # noqa: BLE001 - reported with the server's log
        fail_with_log(server, page, err, f"layout_{width}")
    finally:
        if page is not None:
            page.close()


def test_reloading_the_page_does_not_leak_kernels(server, browser):
    proc, page = server["proc"], None
    try:
        page = open_page(browser, server, 1000)
        for _ in range(4):
            page.reload()
            page.locator(".anomaly-confusion").wait_for(timeout=120_000)
        opened = kernels(proc)
        page.close()
        page = open_page(browser, server, 1000)  # one page stays open
        deadline = time.monotonic() + 6 * CULL_S + 30
        while kernels(proc) > 1 and time.monotonic() < deadline:
            time.sleep(1)
        left = kernels(proc)
        assert left == 1, f"{left} kernels still run for one open page (after {opened})"
        # The open page's kernel was kept: it still answers.
        page.locator(".anomaly-threshold-slider .noUi-handle").focus()
        page.locator(".anomaly-threshold-slider .noUi-handle").press("Home")
        page.wait_for_function(
            "() => document.querySelector('.anomaly-confusion').innerText.includes('0 escapes')",
            timeout=60_000,
        )
    except Exception as err:  # noqa: BLE001 - reported with the server's log
        fail_with_log(server, page, err, "kernels")
    finally:
        if page is not None:
            page.close()
