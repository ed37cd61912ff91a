"""The production install (scripts/install.sh: runtime dependencies only) is enough for the worker: no
module of worker/ or wan_engine/ needs a test or reference package."""
from __future__ import annotations

import subprocess
import sys
import tomllib

from conftest import REPO_ROOT

# transformers is a runtime dependency: the depth annotator of structure guidance runs Depth Anything V2
# through it (wan_engine/annotators.py, imported only when a depth job runs).
DEV_ONLY = ("diffusers", "accelerate", "ftfy", "hypothesis", "pytest")


def test_runtime_dependencies_leave_out_the_test_and_reference_packages() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"]).lower()
    assert not [name for name in DEV_ONLY if name in runtime]
    assert {"huggingface_hub", "filelock", "transformers"} <= {d.split(">")[0].split("=")[0].strip()
                                                               for d in project["dependencies"]}
    assert "pip install -q -e .\n" in (REPO_ROOT / "scripts" / "install.sh").read_text()
    assert '".[dev]"' in (REPO_ROOT / "scripts" / "test.sh").read_text()


def test_every_worker_and_engine_module_imports_without_the_dev_packages() -> None:
    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in DEV_ONLY)  # importing any of them fails
    probe = (
        f"import sys, pkgutil, importlib; {blocked}\n"
        "import worker, wan_engine\n"
        "for package in (worker, wan_engine):\n"
        "    for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(module.name)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
