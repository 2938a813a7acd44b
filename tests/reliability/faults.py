"""Fault injection helpers: a real ``liser`` process killed at a chosen training checkpoint.

A fault is planted as a third-party plugin (found through an installed-looking ``.dist-info``
on PYTHONPATH, exactly like a ``pip install``ed one). Its module either patches LiSER when
imported (e.g. dies in the middle of writing a checkpoint) or implements ``liser_checkpoint``
to send the process a signal once a chosen checkpoint is complete.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from liser_core.testing import TINY_OVERRIDES, write_dist_info

REPO = Path(__file__).resolve().parents[2]

#: A tiny run with every training stage and mid-epoch checkpoints (3 steps per distil epoch).
RESUME_OVERRIDES = [
    *TINY_OVERRIDES,
    "teachers.0.fit.epochs=2",
    "teachers.0.fit.checkpoint_every=1",
    "distil.epochs=2",
    "distil.batch_size=8",
    "distil.checkpoint_every=2",
    "finetune.epochs=1",
    "finetune.batch_size=4",
    "baseline.enabled=true",
    "baseline.epochs=2",
    "baseline.batch_size=4",
]

#: signal the process once the checkpoint (stage, model, step) is complete
SIGNAL_AT = '''\
import os
import signal

from liser_core import hookimpl


@hookimpl
def liser_checkpoint(stage, model, step, finished):
    if (stage, model, step) == ({stage!r}, {model!r}, {step!r}):
        os.kill(os.getpid(), signal.{signal})
'''

#: die (like a SIGKILL or a power cut) while writing the n-th training checkpoint: its files
#: are written, its completeness marker is not
DIE_IN_WRITE = '''\
import os

from liser_common import trainstate

_real = trainstate._write_marker
_calls = [0]


def _dying(folder, marker):
    _calls[0] += 1
    if _calls[0] == {n}:
        os._exit(137)
    _real(folder, marker)


trainstate._write_marker = _dying
'''


def run_cli(
    args: list[str], *, site: Path | None = None, plugin: str | None = None, umask: int | None = None
) -> subprocess.CompletedProcess:
    """``python -m liser_tools.cli ARGS`` in a fresh process, with ``plugin`` (module source)
    installed as the entry point ``fault`` from the folder ``site`` (and ``umask`` set)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if plugin is not None:
        site.mkdir(parents=True, exist_ok=True)
        (site / "liser_fault.py").write_text(plugin)
        write_dist_info(site, "liser-fault", "0.0.1", {"fault": "liser_fault"})
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "liser_tools.cli", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )


def run_here(args: list[str], capsys) -> subprocess.CompletedProcess:
    """``liser ARGS`` in this process, for a refusal: no process to kill and no fault to plant,
    so no new interpreter (seconds of imports) is needed to see its exit status and its lines;
    the same result as :func:`run_cli` (what is written on stderr, the status)."""
    from liser_tools.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def weights(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / name / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"weights differ: {bad[:5]}"


def eval_metrics(run_dir: Path) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in m.items() if isinstance(v, dict) and "uar" in v}
