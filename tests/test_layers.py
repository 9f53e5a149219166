"""The layer contracts of pyproject.toml ([tool.importlinter]): the real package keeps them,
and a planted forbidden import (a lower floor importing a higher one, a method importing
data, the engine importing BBN's model, a cycle in data/) is refused by name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")

pytestmark = pytest.mark.skipif(LINT is None, reason="import-linter is not installed (pip install -e '.[dev]')")


def lint(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the package under `root`/src with `root`/pyproject.toml's contracts."""
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run([LINT, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def copy_of_package(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "src" / "bbn", tmp_path / "src" / "bbn",
                    ignore=shutil.ignore_patterns("__pycache__", "configs"))
    return tmp_path


def test_the_package_keeps_its_layers() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_module_of_the_package_stands_on_a_floor() -> None:
    """A new top-level module or folder of bbn must be placed in the floors contract, or the
    contract would not look at it."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    placed = {name.strip() for layer in layers for name in layer.replace("|", ":").split(":")}
    package = ROOT / "src" / "bbn"
    modules = {f"bbn.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    modules |= {f"bbn.{p.name}" for p in package.iterdir() if (p / "__init__.py").is_file()}
    assert modules - placed == set(), "place these in pyproject.toml's floors contract"


@pytest.mark.parametrize("module, planted, named", [
    ("models/resnet_cifar.py", "import bbn.cli", "bbn.models.resnet_cifar -> bbn.cli"),
    ("engine/train.py", "from bbn.tools.report import write_report", "bbn.engine.train -> bbn.tools.report"),
    ("data/longtail.py", "from bbn.engine.metrics import shot_group", "bbn.data.longtail -> bbn.engine.metrics"),
    ("methods/cumulative.py", "from bbn.data.loader import DeviceImages",
     "bbn.methods.cumulative -> bbn.data.loader"),
    ("samplers.py", "from bbn.methods.base import Batch", "bbn.samplers -> bbn.methods.base"),
    ("engine/evaluate.py", "from bbn.models.bilateral import BilateralModel",
     "bbn.engine.evaluate -> bbn.models.bilateral"),
    # the old cycle of data/: sources.py importing the sources that import it back
    ("data/sources.py", "from bbn.data import arrays", ".sources -> .arrays"),
])
def test_a_planted_forbidden_import_is_refused(tmp_path: Path, module: str, planted: str, named: str) -> None:
    root = copy_of_package(tmp_path)
    path = root / "src" / "bbn" / module
    path.write_text(path.read_text() + f"\n{planted}  # planted by the test\n")
    result = lint(root)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and named in result.stdout, result.stdout
