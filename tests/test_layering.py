"""The packages depend on each other in pipeline order only (pyproject.toml ``[tool.importlinter]``).

``lint-imports`` checks the import graph statically (function-local imports included): ``xoresnet`` ->
``calibration`` -> ``deploy`` | ``hw_targets``, the two last independent of each other except where the CLIs,
``deploy/pipeline.py`` and ``deploy/dispatch.py`` compose them, and the Lava worker never reaching torch.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("xoresnet", "calibration", "deploy", "hw_targets")


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          capture_output=True, text=True, timeout=300)


def test_the_packages_keep_pipeline_order():
    run = lint(REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in run.stdout


@pytest.mark.parametrize("module,edge,needle", [
    ("calibration/fixed_point.py", "from deploy import export_dir", "calibration is not allowed to import deploy"),
    ("xoresnet/network.py", "import calibration.quantize", "xoresnet is not allowed to import calibration"),
    ("hw_targets/energy.py", "from deploy.lava_run import run_lava", "hw_targets is not allowed to import deploy"),
    ("deploy/lava_graph.py", "import hw_targets.packing", "deploy is not allowed to import hw_targets"),
    ("deploy/lava_graph.py", "import calibration.reference",
     "deploy.lava_worker is not allowed to import torch"),
])
def test_a_back_edge_breaks_the_contracts(tmp_path, module, edge, needle):
    """A copy of the packages with one deliberate back-edge fails ``lint-imports`` naming it."""
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / module, "a") as f:
        f.write(f"\n{edge}  # a deliberate back-edge\n")
    run = lint(tmp_path)
    assert run.returncode != 0 and needle in run.stdout, run.stdout[-3000:]
