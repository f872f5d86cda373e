"""environment.yml, pyproject.toml and constraints.txt agree: the same packages, pinned to the
tested versions (environment.yml, constraints.txt), which meet pyproject's minimum versions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PYPI = {"pytorch": "torch"}  # conda-forge names that differ from the PyPI names
NOT_PACKAGES = {"python", "pip"}
SPEC = re.compile(
    r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*"
    r"(?:(>=|==|=)\s*([^\s,;]+))?"
)


def _normalize(name: str) -> str:
    name = re.sub(r"[-_.]+", "-", name.lower())
    return CONDA_TO_PYPI.get(name, name)


def _versions(specs: list[str]) -> dict[str, tuple[str | None, str | None]]:
    """{normalized name: (operator, version)} for requirement strings like 'numpy>=1.24'."""
    out = {}
    for spec in specs:
        m = SPEC.match(spec)
        assert m, f"cannot parse requirement {spec!r}"
        out[_normalize(m.group(1))] = (m.group(2), m.group(3))
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


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[_normalize(name)] = version.strip()
    return pins


@pytest.fixture(scope="module")
def env() -> dict:
    return _read_environment_yml(ROOT / "environment.yml")


@pytest.fixture(scope="module")
def env_packages(env) -> dict:
    found = _versions(env["dependencies"] + [p for p in env["pip"] if p != "-e ."])
    return {n: v for n, v in found.items() if n not in NOT_PACKAGES}


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module")
def minimums(project) -> dict:
    return _versions(
        project["dependencies"]
        + project["optional-dependencies"]["dev"]
        + project["optional-dependencies"]["export"]
    )


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


def test_same_packages(env_packages: dict, minimums: dict) -> None:
    missing_in_env = sorted(set(minimums) - set(env_packages))
    missing_in_pyproject = sorted(set(env_packages) - set(minimums))
    assert not missing_in_env, f"in pyproject.toml but not in environment.yml: {missing_in_env}"
    assert not missing_in_pyproject, (
        f"in environment.yml but not in pyproject.toml: {missing_in_pyproject}"
    )
    assert all(op == ">=" for op, _ in minimums.values()), (
        "every pyproject dependency should state a minimum version (>=)"
    )


def test_environment_pins_the_tested_versions(env_packages: dict, minimums: dict) -> None:
    tested = _constraints()
    for name, (op, version) in env_packages.items():
        assert op in ("=", "=="), f"environment.yml: {name} is not pinned (run `make constraints`)"
        assert tested.get(name) == version, (
            f"environment.yml pins {name} {version}, constraints.txt has {tested.get(name)}; "
            "run `make constraints`"
        )
        assert Version(version) >= Version(minimums[name][1]), (
            f"{name} {version} is below pyproject's minimum {minimums[name][1]}"
        )


def test_constraints_cover_every_dependency_and_not_the_project(minimums: dict) -> None:
    tested = _constraints()
    assert not sorted(set(minimums) - set(tested)), "run `make constraints` in a full venv"
    assert "anomaly" not in tested


def test_make_and_ci_install_with_the_constraints() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installs = [
        line
        for line in makefile.splitlines()
        if "pip install" in line and "--upgrade pip" not in line and "--upgrade -e" not in line
    ]
    assert installs and all("-c $(CONSTRAINTS)" in line for line in installs), installs
    assert "CONSTRAINTS := constraints.txt" in makefile
    assert "constraints.txt" in (ROOT / ".ci" / "run").read_text()


def test_reader_handles_the_file_shape(tmp_path: Path) -> None:
    path = tmp_path / "environment.yml"
    path.write_text(
        "# comment\nname: x\nchannels:\n  - conda-forge\ndependencies:\n  - python=3.11\n"
        "  - pip\n  - pytorch=2.2.1  # torch\n  - pip:\n      - foo_bar==1.0\n      - -e .\n"
    )
    env = _read_environment_yml(path)
    assert env["name"] == "x" and env["channels"] == ["conda-forge"]
    assert env["dependencies"] == ["python=3.11", "pip", "pytorch=2.2.1"]
    assert env["pip"] == ["foo_bar==1.0", "-e ."]
    assert _versions(env["dependencies"][2:] + env["pip"][:1]) == {
        "torch": ("=", "2.2.1"),
        "foo-bar": ("==", "1.0"),
    }
