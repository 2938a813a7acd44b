"""What docs/plugins.md and the README say is what the code does (issue 24, item 3).

Each test runs the documented code or command, or a run, and compares with the text.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from liser_core import label_space
from liser_tools.cli import main

REPO = Path(__file__).resolve().parents[1]
PLUGINS_MD = REPO / "docs" / "plugins.md"


def _python_block(text: str, marker: str) -> str:
    """The ```python block of ``text`` that contains ``marker``."""
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"{len(found)} python blocks contain {marker!r}"
    return found[0]


def test_strict_plugins_exits_2_as_documented_in_plugins_and_list(fake_distribution, tmp_path, capsys):
    """docs/plugins.md: ``--strict-plugins``: any failed plugin is an error (exit status 2), in
    ``liser plugins`` (after its table) as in ``liser list``; without it, a warning and 0."""
    assert "| `--strict-plugins` | any failed plugin is an error (exit status 2" in PLUGINS_MD.read_text()
    src = tmp_path / "src"
    src.mkdir()
    (src / "liser_docs_broken.py").write_text("raise ImportError('broken on purpose')\n")
    fake_distribution("liser-docs-broken", {"docs_broken": "liser_docs_broken"}, path=src)
    assert main(["plugins"]) == 0
    assert main(["plugins", "--strict-plugins"]) == 2
    out, err = capsys.readouterr()
    assert "docs_broken" in out and "failed" in out and "(--strict-plugins)" in err
    assert main(["list", "--strict-plugins"]) == 2
    assert "docs_broken" in capsys.readouterr().err


def test_the_guide_student_example_runs_on_public_names_only():
    """The ``GRUStudent`` block of docs/plugins.md runs as printed, and everything it imports from
    ``liser_plugins.frontend`` is in that module's public ``__all__``."""
    import liser_plugins.frontend as frontend

    code = _python_block(PLUGINS_MD.read_text(), "class GRUStudent(Student)")
    imported = re.search(r"from liser_plugins\.frontend import (.+)", code).group(1)
    assert {n.strip() for n in imported.split(",")} <= set(frontend.__all__)
    namespace: dict = {}
    exec(compile(code, str(PLUGINS_MD), "exec"), namespace)  # noqa: S102 - our own documentation
    torch.manual_seed(0)
    student = namespace["GRUStudent"](label_space("ravdess8"), hidden=8).eval()
    audio = torch.randn(2, 16000) * 0.1
    audio[1, 8000:] = 0
    with torch.no_grad():
        out = student(audio, torch.tensor([16000, 8000]))
    assert out.logits.shape == (2, 8) and out.embedding.shape == (2, 8)
    assert torch.isfinite(out.logits).all() and not torch.equal(out.logits[0], out.logits[1])


def _readme_run_dir_entries() -> list[str]:
    """The first-column names of the README's run-directory table, top-level part only
    (``teachers/<key>/`` -> ``teachers/``; ``confusion_<model>.csv/.png`` -> both names)."""
    text = (REPO / "README.md").read_text()
    table = text.split("| file | what |", 1)[1].split("\n\n", 1)[0]
    names = []
    for row in table.splitlines()[2:]:
        for token in re.findall(r"`([^`]+)`", row.split("|")[1]):
            if (alt := re.fullmatch(r"(.*)\.(\w+)/\.(\w+)", token)):
                names += [f"{alt[1]}.{alt[2]}", f"{alt[1]}.{alt[3]}"]
            else:
                names.append(token.split("/")[0] + "/" if "/" in token else token)
    return names


def _listed(name: str, entries: list[str]) -> bool:
    return any(re.fullmatch(re.sub(r"\\<[^>]*\\>", "[^/]+", re.escape(e).replace("<", "\\<").replace(">", "\\>")), name)
               for e in entries)


def test_the_readme_run_dir_table_and_teacher_keys_match_a_run(run_tiny):
    """Every file and folder a run writes at the top of its run directory is in the README's
    table (and every row but the optional ones is written); two teachers of one name
    get the teacher keys docs/plugins.md defines, in ``run.teachers`` and ``teachers/``."""
    from liser_common import rundir

    entries = _readme_run_dir_entries()
    assert {rundir.MARKER, rundir.LOCK, rundir.WRITTEN, "predictions.csv"} <= set(entries)
    ctx = run_tiny(overrides=[
        "teachers=[{name: audio_cnn, fit: {epochs: 1, batch_size: 16}, options: {channels: [4], hidden: 8}},"
        " {name: 'cnn_teachers:audio_cnn', fit: {epochs: 1, batch_size: 16}, options: {channels: [4], hidden: 8}}]"])
    written = sorted(p.name + ("/" if p.is_dir() else "") for p in ctx.run_dir.iterdir())
    assert [w for w in written if not _listed(w, entries)] == []
    optional = {"wandb/", "confusion_<model>.png"}  # the wandb logger; the tiny run turns plots off
    assert [e for e in entries if e not in optional and not any(_listed(w, [e]) for w in written)] == []
    assert sorted(ctx.teachers) == ["audio_cnn.0", "audio_cnn.1"]
    assert sorted(p.name for p in (ctx.run_dir / "teachers").iterdir()) == ["audio_cnn.0", "audio_cnn.1"]
    assert "`audio_cnn.0`, `audio_cnn.1`" in PLUGINS_MD.read_text()
