"""The packages' layering: engine imports none of ours, backbone only engine, and no task package imports another
task package (shared pieces live in engine or backbone); benchmarks sit on top and may import anything."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("pretrain", "cls", "det", "seg")
ALLOWED = {"engine": set(), "backbone": {"engine"}, **{task: {"engine", "backbone"} for task in TASKS}}
OURS = {*ALLOWED, "benchmarks"}


def imported_packages(path: Path) -> set[str]:
    """Our top-level packages that `path` imports, at module level or inside functions (relative imports are of the
    package itself)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_packages_below_it(package):
    wrong = {f"{path.relative_to(ROOT)} imports {', '.join(sorted(outside))}"
             for path in sorted((ROOT / package).rglob("*.py"))
             if (outside := imported_packages(path) - ALLOWED[package] - {package})}
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package]) or 'nothing of ours'}: " + "; ".join(
        sorted(wrong))


def test_the_check_sees_a_cross_task_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from det.data import collate\n    import seg.model\n    from . import x\n")
    assert imported_packages(module) == {"det", "seg"}
