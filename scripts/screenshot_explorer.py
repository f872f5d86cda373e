"""Screenshot the threshold explorer page for real run folders (the README's picture).

    python scripts/screenshot_explorer.py runs/benchmark/patchknn runs/benchmark/unet [--out docs/explorer.png]

Serves the page as `python -m anomaly explore` does, opens it in Debian's headless Chromium
(scripts/install_browser.sh) and saves the explorer's element as a PNG.
"""

import argparse
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from anomaly.explorer import voila_command

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", default="docs/explorer.png")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd, env = voila_command(args.runs, port=port)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        for _ in range(240):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 1300})
            page.goto(f"http://127.0.0.1:{port}/", timeout=240_000)
            page.locator(".anomaly-confusion").wait_for(timeout=240_000)
            page.wait_for_timeout(2000)  # let the gallery images arrive
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.locator(".anomaly-explorer").screenshot(path=args.out)
            browser.close()
        print(f"wrote {args.out}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
