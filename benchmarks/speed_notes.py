"""Rerun the speed measurements README's "Speed" section quotes and record them in one file.

    make speed-notes        # or:
    python benchmarks/speed_notes.py --notes docs/speed-notes.md \
        --peers-python /tmp/peers-venv/bin/python [--parts race score ...]

Runs, one after another, each in its own process (nothing else of the project should be
running), the parts:

- race: `patchknn_speed.py --race`, patchknn's speed settings against torchvision's MobileNetV2
  in interleaved rounds on the cookies;
- race-448: the same for `auto`'s 448 px candidate (`x2-6-10`) on a photo set, the yardsticks
  at 448 px too, in batches of 1 and of 8;
- score: `score_speed.py`, where `score`'s time goes;
- sweep: `photos_sweep.py`, what those settings cost in accuracy (cookies and photo suite);
- peers-cookies, peers-photos: `peers.py` (anomalib's PatchCore, PaDiM, FastFlow; the `peers`
  virtualenv of benchmarks/README.md, given as `--peers-python`) on the cookies and on every
  set of the photo suite, with `peers_summary.py` over the sets. Without `--peers-python`
  they are not offered.

Each part's section gets when it ran, the machine (processor, cores), the versions, the load
average before and after each command, and every command with its printed tables as they came.
Every speed number in README must be found there. A call with `--parts` replaces those parts'
sections and keeps the others. A file that does not begin with "# Speed notes" is never
replaced (it is not ours).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HEAD = "# Speed notes"
PHOTO_SETS = ("cell", "coins", "dahlia", "deepfield", "moon", "page", "retina", "tissue")
PEERS_METHODS = "backbone,features-onnx,patchknn,patchknn-onnx,padim,patchcore"


def parts(py: str, peers_py: str | None, data: str, photos: str, runs: str) -> dict:
    """name -> (what it measures, [argv, ...]); argv lists run in order, stdout recorded."""

    def argv(python: str, line: str) -> list[str]:
        return [python, *shlex.split(line)]

    out = {
        "race": (
            "patchknn's settings against MobileNetV2, cookies, 224 px",
            [
                argv(
                    py,
                    f"benchmarks/patchknn_speed.py --data {data} --race default "
                    "default-refine02 default-exact default-float32 default-ort-ivf16x2 "
                    "default-ort-ivf16x1 --rounds 5 --batch-size 8 --threads 2 --search",
                )
            ],
        ),
        "race-448": (
            "auto's 448 px candidate against MobileNetV2 at 448 px, tissue, batches of 1 and 8",
            [
                argv(
                    py,
                    f"benchmarks/patchknn_speed.py --data {photos}/tissue --race x2-6-10 "
                    f"default --rounds 5 --batch-size {b} --threads 2",
                )
                for b in (1, 8)
            ],
        ),
        "score": (
            "where `score`'s time goes, default patchknn run, cookies",
            [
                argv(
                    py,
                    f"benchmarks/score_speed.py --data {data} --run {runs}/score-speed-run "
                    "--workers 0 1 --batch-sizes 16 --rounds 3",
                )
            ],
        ),
    }
    out["sweep"] = (
        "what the speed settings cost in accuracy, cookies and photo suite",
        [
            argv(
                py,
                f"benchmarks/photos_sweep.py --suite {photos} --cookies {data} --settings "
                "default default-refine02 default-exact default-float32 default-ort-ivf16x2 "
                "default-ort-ivf16x1 --threads 2",
            )
        ],
    )
    if peers_py:
        peers = "benchmarks/peers.py --threads 2 --patchcore-coreset 0.01"
        out["peers-cookies"] = (
            "anomalib's peers on the cookies, 224 px",
            [
                argv(
                    peers_py,
                    f"{peers} {data} --methods {PEERS_METHODS} --rounds 5 "
                    f"--out {runs}/peers-cookies",
                )
            ],
        )
        out["peers-photos"] = (
            "anomalib's peers on the photo suite, 224 px",
            [
                *(
                    argv(peers_py, f"{peers} {photos}/{s} --rounds 3 --out {runs}/peers-photos/{s}")
                    for s in PHOTO_SETS
                ),
                argv(peers_py, f"benchmarks/peers_summary.py {runs}/peers-photos"),
            ],
        )
    return out


def machine() -> str:
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    # every script here sets PASSIVE unless the environment chose (as the commands do)
    policy = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
    return (
        f"{model}; {os.cpu_count()} logical CPUs; {platform.platform()}; OMP_WAIT_POLICY {policy}"
    )


def versions(py: str) -> str:
    code = (
        "import importlib.metadata as m\n"
        "for p in ('torch', 'onnxruntime', 'numpy', 'anomalib'):\n"
        "    try: print(p, m.version(p))\n"
        "    except m.PackageNotFoundError: pass\n"
    )
    got = subprocess.run([py, "-c", code], capture_output=True, text=True, check=False)
    return ", ".join(got.stdout.split("\n")).strip(", ")


def load() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def check_notes(path: Path) -> None:
    if path.exists() and not path.read_text(errors="replace").startswith(HEAD):
        raise SystemExit(f"{path} does not begin with {HEAD!r}: not a notes file, left alone")


def kept_sections(path: Path) -> dict[str, str]:
    """The part sections ("## name: ...") of an earlier notes file, by part name."""
    if not path.exists():
        return {}
    chunks = path.read_text(errors="replace").split("\n## ")[1:]
    return {c.split(":", 1)[0]: "## " + c for c in chunks}


def run_part(name: str, what: str, argvs: list[list[str]], about: str) -> str:
    lines = [f"## {name}: {what}", "", f"Begun {now()}. {about}", ""]
    for argv in argvs:
        print(f"[{now()}] {shlex.join(argv)}", file=sys.stderr, flush=True)
        before, start = load(), time.perf_counter()
        got = subprocess.run(argv, capture_output=True, text=True, check=False)
        took = time.perf_counter() - start
        lines += ["```sh", shlex.join(argv), "```", ""]
        lines.append(
            f"Ended {now()} after {took:.0f} s, exit {got.returncode}; load average "
            f"(1 / 5 / 15 min) before {before}, after {load()}."
        )
        lines += ["", got.stdout.rstrip(), ""]
        if got.returncode:
            lines += ["It failed; the end of its errors:", "", "```", got.stderr[-3000:], "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--notes", type=Path, default=Path("docs/speed-notes.md"))
    p.add_argument("--python", default=sys.executable, help="the project's Python")
    p.add_argument("--peers-python", help="Python of the `peers` virtualenv (anomalib)")
    p.add_argument("--data", default="data/cookies")
    p.add_argument("--photos", default="data/photos")
    p.add_argument("--runs", default="runs/speed-notes", help="folder for the parts' runs")
    p.add_argument("--parts", nargs="+", help="only these parts (default: all)")
    args = p.parse_args(argv)
    check_notes(args.notes)
    table = parts(args.python, args.peers_python, args.data, args.photos, args.runs)
    chosen = args.parts or list(table)
    unknown = sorted(set(chosen) - set(table))
    if unknown:
        p.error(f"unknown or unavailable parts {unknown}; here: {', '.join(table)}")
    about = f"Machine: {machine()}. Versions: {versions(args.python)}"
    if args.peers_python:
        about += f"; the peers' Python: {versions(args.peers_python)}"
    head = (
        f"{HEAD}\n\nWritten by `benchmarks/speed_notes.py` (`make speed-notes`); the last call "
        f"was `{shlex.join(['python', *sys.argv])}`. Each part says when and where it ran; "
        "a call with some `--parts` keeps the other parts' sections.\n"
    )
    sections = kept_sections(args.notes)
    order = list(parts(args.python, "peers", "", "", ""))
    for n in chosen:  # the file is written after each part: a later failure loses nothing
        sections[n] = run_part(n, table[n][0], table[n][1], about + ".")
        body = "\n".join(sections[k].rstrip() + "\n" for k in order if k in sections)
        check_notes(args.notes)  # the file may have been replaced while the part ran
        args.notes.parent.mkdir(parents=True, exist_ok=True)
        args.notes.write_text(head + "\n" + body)
        print(f"wrote {args.notes} ({n})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
