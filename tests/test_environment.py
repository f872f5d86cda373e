"""environment.yml and pyproject.toml list the same packages with the same minimum versions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PYPI = {"pytorch": "torch"}  # conda-forge names that differ from the PyPI names
NOT_PACKAGES = {"python", "pip"}
SPEC = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?:>=\s*([^\s,;]+))?")


def _normalize(name: str) -> str:
    name = re.sub(r"[-_.]+", "-", name.lower())
    return CONDA_TO_PYPI.get(name, name)


def _minimums(specs: list[str]) -> dict[str, str | None]:
    """{normalized name: minimum version or None} for requirement strings like 'numpy>=1.24'."""
    out = {}
    for spec in specs:
        m = SPEC.match(spec)
        assert m, f"cannot parse requirement {spec!r}"
        out[_normalize(m.group(1))] = m.group(2)
    return out


def _read_environment_yml(path: Path) -> dict:
    """A tiny reader for the shape of environment.yml: top-level keys holding lists of strings,
    and one nested `- pip:` list under `dependencies`. Returns {key: [...], "pip": [...]}."""
    data: dict[str, list[str] | str] = {"pip": []}
    key, in_pip, pip_indent = None, False, 0
    for raw in path.read_text().splitlines():
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        text = line.strip()
        if indent == 0:
            key, _, value = text.partition(":")
            data[key] = value.strip() or []
            in_pip = False
        elif text == "- pip:":
            in_pip, pip_indent = True, indent
        elif text.startswith("- "):
            item = text[2:].strip().strip("'\"")
            if in_pip and indent > pip_indent:
                data["pip"].append(item)
            else:
                in_pip = False
                data[key].append(item)
    return data


@pytest.fixture(scope="module")
def env() -> dict:
    return _read_environment_yml(ROOT / "environment.yml")


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_channel_is_conda_forge(env: dict) -> None:
    assert env["channels"] and env["channels"][0] == "conda-forge"


def test_pip_section_installs_the_package_last(env: dict) -> None:
    assert "pip" in env["dependencies"], "the pip section needs `- pip` in dependencies"
    assert env["pip"] and env["pip"][-1] == "-e .", "the pip section must end with `-e .`"


def test_python_version_meets_requires_python(env: dict, project: dict) -> None:
    python = next(d for d in env["dependencies"] if _normalize(SPEC.match(d).group(1)) == "python")
    pinned = tuple(int(x) for x in re.findall(r"\d+", python)[:2])
    required = tuple(int(x) for x in re.findall(r"\d+", project["requires-python"])[:2])
    assert pinned >= required, f"environment.yml has {python}, pyproject needs {required}"


def test_same_packages_and_minimum_versions(env: dict, project: dict) -> None:
    pyproject = _minimums(project["dependencies"] + project["optional-dependencies"]["dev"])
    conda = _minimums(env["dependencies"] + [p for p in env["pip"] if p != "-e ."])
    for name in NOT_PACKAGES:
        conda.pop(name, None)
    missing_in_env = sorted(set(pyproject) - set(conda))
    missing_in_pyproject = sorted(set(conda) - set(pyproject))
    assert not missing_in_env, f"in pyproject.toml but not in environment.yml: {missing_in_env}"
    assert not missing_in_pyproject, (
        f"in environment.yml but not in pyproject.toml: {missing_in_pyproject}"
    )
    differ = {n: (pyproject[n], conda[n]) for n in pyproject if pyproject[n] != conda[n]}
    assert not differ, f"minimum versions differ (pyproject, environment.yml): {differ}"
    assert all(pyproject.values()), "every dependency should state a minimum version (>=)"


def test_reader_handles_the_file_shape(tmp_path: Path) -> None:
    path = tmp_path / "environment.yml"
    path.write_text(
        "# comment\nname: x\nchannels:\n  - conda-forge\ndependencies:\n  - python=3.11\n"
        "  - pip\n  - pytorch>=2.2  # torch\n  - pip:\n      - foo_bar>=1.0\n      - -e .\n"
    )
    env = _read_environment_yml(path)
    assert env["name"] == "x" and env["channels"] == ["conda-forge"]
    assert env["dependencies"] == ["python=3.11", "pip", "pytorch>=2.2"]
    assert env["pip"] == ["foo_bar>=1.0", "-e ."]
    assert _minimums(env["dependencies"][2:] + env["pip"][:1]) == {"torch": "2.2", "foo-bar": "1.0"}
