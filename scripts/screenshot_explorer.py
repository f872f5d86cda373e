"""Screenshot the threshold explorer page for real run folders (the README's picture).

    python scripts/screenshot_explorer.py runs/benchmark/patchknn runs/benchmark/unet \
        [--out docs/explorer.png] [--width 1280] [--compare]

Serves the page as `python -m anomaly explore` does (local, with a token), opens it in Debian's
headless Chromium (scripts/install_browser.sh) at twice the pixel density, optionally compares
the first run with the second, and saves the explorer's element as a PNG (of 256 colours).
"""

import argparse
import os
import signal
import socket
import subprocess
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

from anomaly.explorer.server import page_url, voila_command

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", default="docs/explorer.png")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels")
    parser.add_argument("--scale", type=float, default=1.0, help="device pixel ratio")
    parser.add_argument("--compare", action="store_true", help="compare with the second run")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd, env = voila_command(args.runs, port=port)
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(
                viewport={"width": args.width, "height": 1300}, device_scale_factor=args.scale
            )
            for _ in range(120):  # the server takes a few seconds to listen
                try:
                    page.goto(page_url(cmd), timeout=240_000)
                    break
                except Exception:  # noqa: BLE001 - not listening yet
                    page.wait_for_timeout(500)
            page.locator(".anomaly-confusion").wait_for(timeout=240_000)
            if args.compare and len(args.runs) > 1:
                page.locator(".anomaly-compare select").select_option(index=1)
                page.wait_for_function(
                    "() => document.querySelector('.anomaly-gallery-title').innerText"
                    ".includes('Compared with')",
                    timeout=60_000,
                )
            page.wait_for_timeout(2000)  # let the gallery images arrive
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.locator(".anomaly-explorer").screenshot(path=args.out)
            browser.close()
        with Image.open(args.out) as shot:  # 256 colours: the page has few, a third the bytes
            few = shot.convert("RGB").quantize(
                256, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
            )
        few.save(args.out, optimize=True)
        print(f"wrote {args.out}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
