"""Sharing a student on the Hugging Face Hub (``liser push``, ``Student.push_to_hub``).

Loading is :func:`liser_common.weights.resolve_source`: ``Student.from_pretrained``,
``liser predict`` and ``liser serve`` take a Hub id wherever they take a folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from liser_core.checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_component_config
from liser_core.errors import UsageError

#: what a pushed student folder holds (anything else in the folder stays local)
PUSHED = (CONFIG_NAME, WEIGHTS_NAME, "README.md", "student.onnx", "student.onnx.json")


def push(student_dir: str | Path, repo_id: str, *, private: bool = False, api=None, onnx: bool = True,
         commit_message: str | None = None) -> str:
    """Upload a saved student to the Hub as ``repo_id``: weights, config, its model card (written
    from its run when the folder is a run's ``student/`` and has none) and, with ``onnx``, its
    ONNX export with the sidecar metadata. Nothing is written into ``student_dir``: the upload is
    staged in a temporary folder. ``api``: a ``huggingface_hub.HfApi`` (or a stand-in with
    ``create_repo`` and ``upload_folder``). Returns the commit's URL (or the stand-in's answer)."""
    from liser_common.weights import HUB_ID

    src = Path(student_dir)
    if not (src / CONFIG_NAME).is_file() or not (src / WEIGHTS_NAME).is_file():
        raise UsageError(f"{src}: not a saved student (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    read_component_config(src, "student")  # refuses a teacher or a foreign folder, naming why
    if not HUB_ID.fullmatch(repo_id):
        raise UsageError(f"{repo_id!r} is not a Hub repository id (org/name)")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    with tempfile.TemporaryDirectory(prefix="liser-push-") as tmp:
        stage = Path(tmp) / "student"
        stage.mkdir()
        for name in (CONFIG_NAME, WEIGHTS_NAME, "README.md"):
            if (src / name).is_file():
                shutil.copy2(src / name, stage / name)
        if not (stage / "README.md").is_file() and (src.parent / "metrics.json").is_file():
            from .card import model_card

            (stage / "README.md").write_text(model_card(src.parent, repo_id=repo_id))
        if onnx:
            from .deploy import export

            export(stage, stage / "student.onnx")
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(stage),
                                 allow_patterns=list(PUSHED),
                                 commit_message=commit_message or f"LiSER student {json.loads((stage / CONFIG_NAME).read_text())['name']}")
    return str(getattr(info, "commit_url", info))
