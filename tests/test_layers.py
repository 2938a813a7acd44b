"""The packages are layers: each imports only the ones below it (docs/architecture.md).

liser_cache -> nothing of LiSER; liser_common -> liser_cache; liser_core -> both (and
liser_tools only through the three documented forwarding points); liser_tools -> all three.
Every import counts, including those inside functions.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = ("liser_cache", "liser_common", "liser_core", "liser_tools", "liser_plugins")
ALLOWED = {
    "liser_cache": {"liser_cache"},
    "liser_common": {"liser_cache", "liser_common"},
    "liser_core": {"liser_cache", "liser_common", "liser_core"},
}
#: liser_core reaches up in three places only: the forwarding shims testing.py (lazy) and cli.py
#: (``python -m liser_core.cli``), and Student.push_to_hub (lazy).
UPWARD = {("liser_core/testing.py", "liser_tools"), ("liser_core/cli.py", "liser_tools"),
          ("liser_core/components.py", "liser_tools")}


def imported_packages(path: Path, package: str) -> set[str]:
    """Top-level LiSER packages that ``path`` imports (relative imports resolved)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [package] if node.level else [node.module or ""]
        else:
            continue
        out |= {n.split(".")[0] for n in names if n.split(".")[0] in OURS}
    return out


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_the_layers_below_it(package):
    wrong = []
    for path in sorted((REPO / package).rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for dep in imported_packages(path, package) - ALLOWED[package]:
            if (rel, dep) not in UPWARD:
                wrong.append(f"{rel} imports {dep}")
    assert not wrong, "\n".join(wrong)


def test_the_scan_sees_lazy_and_relative_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from . import x\ndef f():\n    from liser_core.engine import Engine\n    import liser_tools.cli\n")
    assert imported_packages(f, "liser_common") == {"liser_common", "liser_core", "liser_tools"}


def test_the_lower_layers_import_without_the_engine():
    mods = [f"{p.parent.name}.{p.stem}" for pkg in ("liser_cache", "liser_common")
            for p in sorted((REPO / pkg).glob("*.py")) if p.stem != "__init__"]
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith('liser')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "['liser_cache', 'liser_common']"
