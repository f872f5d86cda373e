"""What made a run, for versions.json (`anomaly.runs.RunDir.create`): the package and the code it
ran from, the libraries, the processor and the features that change its arithmetic, and the data
set's generator record.

Two runs of the same flags, seed and data give the same model.pt on the same machine and
versions; this record is how someone with only the run folder can tell which those were.
"""

from __future__ import annotations

import contextlib
import json
import platform
import subprocess
import sys
from pathlib import Path

# CPU features that decide which code runs: VNNI picks patchknn's 8-bit search
# (`anomaly.detectors.knn.fast_int8`), and the vector width moves trained networks' last digits
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
# a data set's manifest.json fields that say how it was made (the rest lists its files)
MANIFEST_FIELDS = ("generator", "generator_version", "preset", "seed", "size", "difficulty")


def versions(data: str | Path | None = None) -> dict:
    """The versions that made a run (saved as versions.json, where `RunDir.save_fit_seconds`
    adds how long fitting took); `data`: the data set, whose generator record is kept."""
    from importlib.metadata import PackageNotFoundError, version

    import numpy
    import torch

    from anomaly import __version__

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "anomaly": __version__,
        "code": code_version(),  # the commit: __version__ stays while the code changes
        "data_manifest": data_manifest(data) if data else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": processor(),  # float results differ between processors
        "cpu_features": cpu_features(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),  # some trainings differ by thread count
        "torchvision": installed("torchvision"),  # importing it costs about 2 s
        # None: not installed, so --runtime auto ran torch (last digits of a patchknn bank)
        "onnxruntime": installed("onnxruntime"),
        "numpy": numpy.__version__,
        "scikit-learn": installed("scikit-learn"),  # importing it costs about 2 s
        "scipy": installed("scipy"),
        "pillow": installed("pillow"),  # decodes every image
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }


def processor() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what `platform` says."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_features() -> list[str] | None:
    """Which of `CPU_FEATURES` /proc/cpuinfo lists (None where there is none: not Linux)."""
    from anomaly.detectors.knn import cpu_flags

    flags = cpu_flags()
    return None if flags is None else [f for f in CPU_FEATURES if f in flags]


def code_version() -> str | None:
    """The git commit of the checkout this package runs from (an editable install), with
    "+changes" when its files differ from that commit; None for an installed package, or
    where git cannot say."""
    here = str(Path(__file__).resolve().parent)

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "--no-optional-locks", "-C", here, *args],
                check=False,
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    head = git("rev-parse", "HEAD")
    if not head:
        return None
    changes = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return head + ("+changes" if changes else "")


def data_manifest(data: str | Path) -> dict | None:
    """How the data set was made: `MANIFEST_FIELDS` of its manifest.json and its image counts (a
    photo-suite set's: the suite's, with the set's name), or None where it has none that reads."""
    root = Path(data)
    for folder, name in ((root, None), (root.parent, root.name)):
        try:
            record = json.loads((folder / "manifest.json").read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict):
            continue
        if name is not None and name not in (record.get("sets") or {}):
            continue  # the folder above is not this set's suite
        kept = {
            k: record[k] for k in MANIFEST_FIELDS if isinstance(record.get(k), (str, int, float))
        }
        counts = record.get("counts")  # make-photos --good/--defect: how many images it made
        if isinstance(counts, dict) and len(counts) <= 8:
            kept["counts"] = {str(k): v for k, v in counts.items() if type(v) is int}
        return {**kept, **({"set": name} if name else {})}
    return None
