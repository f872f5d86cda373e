"""OpenMP's wait policy: the commands run torch with sleeping idle threads, and the benchmark
scripts that time them must run it the same way (docs/measurements.md, 2026-12-04: a spinning
policy moved the race's ratio from 0.44 to 0.38 or 0.52)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# modules whose import loads OpenMP (torch's libgomp) or imports one that does
LOADS_OPENMP = {"torch", "torchvision", "sklearn", "anomalib", "peers_models", "onnxruntime"}


def _policy_after(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    got = subprocess.run(
        [sys.executable, "-c", code + "; import os; print(os.environ.get('OMP_WAIT_POLICY'))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=environ,
    )
    return got.stdout.strip().splitlines()[-1]


def test_the_package_makes_idle_threads_sleep_unless_the_user_chose():
    assert _policy_after("import anomaly") == "PASSIVE"
    assert _policy_after("import anomaly", OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


def _sets_policy(node: ast.stmt) -> bool:
    """`os.environ.setdefault("OMP_WAIT_POLICY", ...)`, or an import of the package."""
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] == "anomaly" for a in node.names)
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] == "anomaly"
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        call = node.value
        return (
            ast.unparse(call.func) == "os.environ.setdefault"
            and bool(call.args)
            and isinstance(call.args[0], ast.Constant)
            and call.args[0].value == "OMP_WAIT_POLICY"
        )
    return False


def _loads_openmp(node: ast.stmt) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] in LOADS_OPENMP for a in node.names)
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] in LOADS_OPENMP
    return False


def _policy_first(path: Path) -> bool | None:
    """True when the script sets the policy before it first loads OpenMP, False when it loads
    OpenMP first, None when it never does at the top level."""
    for node in ast.parse(path.read_text()).body:
        if _sets_policy(node):
            return True
        if _loads_openmp(node):
            return False
    return None


@pytest.mark.parametrize("script", sorted((ROOT / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_run_openmp_as_the_commands_do(script):
    assert _policy_first(script) is not False, (
        f"{script.name} loads OpenMP before it sets OMP_WAIT_POLICY as the package does: add "
        "os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE') before its first import of torch"
    )


def test_the_check_sees_a_script_that_loads_openmp_first(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nimport torch\n\nfrom anomaly.data import AnomalyDataset\n")
    good = tmp_path / "good.py"
    good.write_text(
        'import os\n\nos.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")\nimport torch\n'
    )
    assert _policy_first(bad) is False
    assert _policy_first(good) is True
