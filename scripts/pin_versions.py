"""Pin the tested versions: write constraints.txt from this environment and pin environment.yml.

    make constraints        # after `make upgrade` (or any change of the venv) and a green `make test`

constraints.txt is every package installed in the venv (except the project itself and packages
installed from local files), as `pip freeze` writes it; `make install` installs with
`pip install -c constraints.txt`, so a fresh machine gets the versions the tests passed with.
environment.yml's packages are pinned to the same versions (conda `name=version`, pip
`name==version`); pyproject.toml keeps the minimum versions the code needs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = """\
# The versions `make test` passed with (pip freeze of the venv, without the project itself).
# `make install` and CI install with `pip install -c constraints.txt`; environment.yml pins the
# same versions. To upgrade: `make upgrade` (newest versions pyproject.toml allows), then
# `make test`, then `make constraints` (rewrites this file and environment.yml's pins).
"""
LINE = re.compile(r"^(\s*- )([A-Za-z0-9][A-Za-z0-9._-]*)(\s*(?:[<>=!~]=?|=)\s*[^\s#]+)?(.*)$")
CONDA_TO_PYPI = {"pytorch": "torch"}
NOT_PINNED = {"python", "pip"}


def normalize(name: str) -> str:
    name = re.sub(r"[-_.]+", "-", name.lower())
    return CONDA_TO_PYPI.get(name, name)


def freeze() -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    pins = {}
    for line in out.splitlines():
        if "==" in line and " @ " not in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[normalize(name)] = f"{name}=={version.strip()}"
    return pins


def pin_environment(text: str, pins: dict[str, str]) -> str:
    lines, in_pip = [], False
    for raw in text.splitlines():
        in_pip = in_pip or raw.strip() == "- pip:"
        m = LINE.match(raw)
        name = m.group(2) if m else None
        if m and normalize(name) not in NOT_PINNED and normalize(name) in pins:
            version = pins[normalize(name)].split("==", 1)[1]
            raw = f"{m.group(1)}{name}{'==' if in_pip else '='}{version}{m.group(4)}"
        lines.append(raw)
    return "\n".join(lines) + "\n"


def main() -> None:
    pins = freeze()
    (ROOT / "constraints.txt").write_text(
        HEADER + "\n".join(sorted(pins.values(), key=str.lower)) + "\n"
    )
    env = ROOT / "environment.yml"
    env.write_text(pin_environment(env.read_text(), pins))
    print(f"pinned {len(pins)} packages in constraints.txt and environment.yml")


if __name__ == "__main__":
    main()
