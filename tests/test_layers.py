"""The packages are layers: each imports only the ones below it (docs/architecture.md).

liser_cache -> nothing of LiSER; liser_common -> liser_cache; liser_core -> both; the
first-party plugins (liser_plugins) and liser_tools -> those three, and not each other.
Every import counts: those inside functions, relative ones, and ``importlib.import_module`` /
``__import__`` with a literal name. The only upward edges are the two documented forwarding
shims of liser_core (``FORWARDING``), and the test fails when either stops being one.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: import name -> folder in the repository (pyproject maps plugins/ to liser_plugins)
FOLDERS = {"liser_cache": "liser_cache", "liser_common": "liser_common", "liser_core": "liser_core",
           "liser_plugins": "plugins", "liser_tools": "liser_tools"}
OURS = tuple(FOLDERS)
BELOW_CORE = {"liser_cache", "liser_common", "liser_core"}
ALLOWED = {
    "liser_cache": {"liser_cache"},
    "liser_common": {"liser_cache", "liser_common"},
    "liser_core": BELOW_CORE,
    "liser_plugins": BELOW_CORE | {"liser_plugins"},
    "liser_tools": BELOW_CORE | {"liser_tools"},
}
#: The only upward edges, documented in docs/architecture.md: forwarding shims kept so that old
#: names work (``liser_core.testing``: the fixtures and checks; ``python -m liser_core.cli``).
FORWARDING = {("liser_core/testing.py", "liser_tools"), ("liser_core/cli.py", "liser_tools")}


def _dynamic_name(node: ast.Call) -> str | None:
    """The module a call ``importlib.import_module("x")`` / ``__import__("x")`` names, else None."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
        return str(node.args[0].value)
    return None


def imported_packages(path: Path, package: str) -> set[str]:
    """Top-level LiSER packages that ``path`` imports anywhere in it (relative imports resolved)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [package] if node.level else [node.module or ""]
        elif isinstance(node, ast.Call) and (dynamic := _dynamic_name(node)) is not None:
            names = [dynamic]
        else:
            continue
        out |= {n.split(".")[0] for n in names if n.split(".")[0] in OURS}
    return out


def violations(root: Path, package: str) -> list[str]:
    """``FILE imports PACKAGE`` for every edge of ``package`` under ``root`` that the layers forbid."""
    wrong = []
    for path in sorted((root / FOLDERS[package]).rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for dep in sorted(imported_packages(path, package) - ALLOWED[package]):
            if (rel, dep) not in FORWARDING:
                wrong.append(f"{rel} imports {dep}")
    return wrong


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_the_layers_below_it(package):
    wrong = violations(REPO, package)
    assert not wrong, "\n".join(wrong)


def test_the_forwarding_shims_are_still_only_shims():
    """Each documented exception still exists and holds no code of its own (a docstring, imports,
    ``__all__`` and small forwarding functions), so the list cannot grow into a back door."""
    for rel, dep in sorted(FORWARDING):
        path = REPO / rel
        assert dep in imported_packages(path, rel.split("/")[0]), f"{rel}: stale exception, remove it"
        code = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        assert len(code) <= 40, f"{rel} grew to {len(code)} lines: it must stay a forwarding shim"
        classes = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)]
        assert not classes, f"{rel} defines classes: it must stay a forwarding shim"


@pytest.mark.parametrize(("package", "plant", "expected"), [
    ("liser_core", "def push():\n    from liser_tools.hub import push\n", "liser_core/components.py imports liser_tools"),
    ("liser_plugins", "def card():\n    from liser_tools import card\n", "plugins/run_dir/__init__.py imports liser_tools"),
    ("liser_plugins", "import importlib\nT = importlib.import_module('liser_tools.card')\n",
     "plugins/run_dir/__init__.py imports liser_tools"),
    ("liser_tools", "def p():\n    import liser_plugins.frontend\n", "liser_tools/hub.py imports liser_plugins"),
    ("liser_common", "def e():\n    from liser_core import engine\n", "liser_common/errors.py imports liser_core"),
])
def test_a_planted_upward_import_fails_the_check(tmp_path, package, plant, expected):
    """The check is not vacuous: the same scan over a copy with one lazy upward import fails,
    naming the file and the layer it reaches."""
    folder = FOLDERS[package]
    shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    assert violations(tmp_path, package) == []
    target = tmp_path / expected.split(" imports ")[0]
    target.write_text(target.read_text() + "\n\n" + plant)
    assert violations(tmp_path, package) == [expected]


def test_the_scan_sees_lazy_relative_and_dynamic_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from . import x\ndef f():\n    from liser_core.engine import Engine\n    import liser_tools.cli\n"
                 "def g():\n    __import__('liser_plugins.losses')\n")
    assert imported_packages(f, "liser_common") == {"liser_common", "liser_core", "liser_tools", "liser_plugins"}


def test_the_lower_layers_import_without_the_engine():
    mods = [f"{p.parent.name}.{p.stem}" for pkg in ("liser_cache", "liser_common")
            for p in sorted((REPO / pkg).glob("*.py")) if p.stem != "__init__"]
    code = ("import importlib, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith('liser')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "['liser_cache', 'liser_common']"


def test_pushing_and_carding_load_no_tools():
    """What the item-5 moves were for: the run_dir plugin's card writer, ``Student.push_to_hub``'s
    uploader and the ONNX export they use import no ``liser_tools`` module at run time either."""
    code = ("import sys, liser_core, liser_core.card, liser_core.hub, liser_core.export, liser_plugins.run_dir\n"
            "print(sorted(m for m in sys.modules if m.startswith('liser_tools')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
