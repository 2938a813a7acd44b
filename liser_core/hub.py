"""Sharing a student on the Hugging Face Hub (``liser push``, ``Student.push_to_hub``).

Loading is :func:`liser_common.weights.resolve_source`: ``Student.from_pretrained``,
``liser predict`` and ``liser serve`` take a Hub id wherever they take a folder.

Network faults are one line each, naming the endpoint and what to do: offline mode
(``HF_HUB_OFFLINE``) is refused before anything is staged; no network, a refused connection, a
Hub that does not answer within the timeout (connect, read and write: ``--timeout``,
``LISER_HUB_TIMEOUT``, default 60 s; huggingface_hub itself waits forever) and HTTP errors
(401/403: log in) end the push, and the staging folder is removed.

In ``liser_core`` with the model card (:mod:`liser_core.card`) and the export
(:mod:`liser_core.export`) it uploads, so that ``Student.push_to_hub`` needs nothing from
``liser_tools``; ``liser_tools.hub`` re-exports it (docs/architecture.md).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .checkpoint import CONFIG_NAME, WEIGHTS_NAME, read_component_config
from .errors import LiserError, UsageError

log = logging.getLogger("liser")

#: Seconds to wait for the Hub to accept a connection, answer, or take the next bytes.
DEFAULT_TIMEOUT = 60.0


class HubError(LiserError):
    """The Hub could not be reached or refused the upload (an environment fault: exit 1)."""


def hub_timeout(seconds: float | None = None) -> float:
    """The Hub timeout: ``seconds`` if given, else ``LISER_HUB_TIMEOUT``, else 60 s."""
    source = "--timeout"
    if seconds is None:
        raw = os.environ.get("LISER_HUB_TIMEOUT")
        if raw is None:
            return DEFAULT_TIMEOUT
        source = "LISER_HUB_TIMEOUT"
        try:
            seconds = float(raw)
        except ValueError:
            raise UsageError(f"LISER_HUB_TIMEOUT={raw!r}: give a number of seconds > 0") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"{source} {seconds}: give a number of seconds > 0")
    return float(seconds)


@contextmanager
def timeouts(seconds: float) -> Iterator[None]:
    """huggingface_hub's shared HTTP client with connect, read, write and pool timeouts of
    ``seconds`` inside the block (by default it has none); the previous client factory after."""
    from huggingface_hub.utils import _http, set_client_factory

    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)

    def factory():
        client = previous()
        client.timeout = type(client.timeout)(seconds)  # httpx's Timeout, whichever httpx it is
        return client

    set_client_factory(factory)
    try:
        yield
    finally:
        set_client_factory(previous)


def network_error(exc: BaseException, endpoint: str, repo_id: str, seconds: float) -> LiserError | None:
    """One line for a network or Hub failure of a push (None: not one)."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    kind = type(exc).__name__
    if isinstance(exc, OfflineModeIsEnabled):
        return UsageError(f"{endpoint}: HF_HUB_OFFLINE is set, and liser push needs the network: "
                          "unset HF_HUB_OFFLINE and retry")
    if "Timeout" in kind:  # httpx's ConnectTimeout, ReadTimeout, WriteTimeout, PoolTimeout
        return HubError(f"{endpoint}: the Hugging Face Hub did not answer within {seconds:g} s ({kind}); "
                        "check the network or proxy and retry, or allow longer with --timeout or LISER_HUB_TIMEOUT")
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else kind
        todo = ("log in with `hf auth login` or set HF_TOKEN to a token that may write to "
                f"{repo_id}" if status in (401, 403) else "retry later, or check the repository id")
        return HubError(f"{endpoint}: the Hugging Face Hub refused the upload to {repo_id} "
                        f"(HTTP {status}: {detail}); {todo}")
    if isinstance(exc, (OSError, ConnectionError)) or kind.endswith(("ConnectError", "NetworkError", "ProxyError",
                                                                     "ProtocolError", "ReadError", "WriteError")):
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else kind
        return HubError(f"{endpoint}: cannot reach the Hugging Face Hub ({reason}); check the network, a proxy "
                        "or HF_ENDPOINT, and retry")
    return None

@contextmanager
def _hub_call(endpoint: str, repo_id: str, seconds: float) -> Iterator[None]:
    """Calls to the Hub with :func:`timeouts`; network and Hub failures become one line
    (:func:`network_error`), others propagate."""
    try:
        with timeouts(seconds):
            yield
    except Exception as exc:  # noqa: BLE001
        if (error := network_error(exc, endpoint, repo_id, seconds)) is None:
            raise
        raise error from exc


#: what a pushed student folder holds (anything else in the folder stays local)
PUSHED = (CONFIG_NAME, WEIGHTS_NAME, "README.md", "recipe.yaml", "student.onnx", "student.onnx.json",
          "student.int8.onnx", "student.int8.onnx.json", "quantization.json")

#: the int8 export and its records, pushed with the ONNX export when the folder has them as
#: ``liser export --quantize int8`` wrote them (the model card's Quantization section names them)
INT8 = ("student.int8.onnx", "student.int8.onnx.json", "quantization.json")


def _format(meta_path: Path) -> str | None:
    try:
        return json.loads(meta_path.read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def run_of(student_dir: str | Path) -> Path | None:
    """The run a student folder belongs to: ``RUN_DIR`` for ``RUN_DIR/student`` beside its
    ``metrics.json``; None for a student saved elsewhere."""
    src = Path(student_dir)
    return src.parent if src.name == "student" and (src.parent / "metrics.json").is_file() else None


def check_card(student_dir: str | Path, *, edited_card: bool = False) -> None:
    """A run's model card is pushed as LiSER wrote it: one changed since (``.liser-written.json``
    records another SHA-256) may state other scores than the run's, and is refused unless
    ``edited_card`` says it is meant (a card with no record is the user's own)."""
    from liser_common.rundir import changed_since_written

    run = run_of(student_dir)
    card = Path(student_dir) / "README.md"
    if run is not None and card.is_file() and not edited_card and changed_since_written(run, "student/README.md"):
        raise UsageError(
            f"{card} was changed since LiSER wrote it (.liser-written.json records another SHA-256): its scores may "
            "not be the run's (metrics.json); push it as it is with --edited-card, or move it away to push the card "
            "LiSER writes from the run"
        )


def push(student_dir: str | Path, repo_id: str, *, private: bool = False, api=None, onnx: bool = True,
         commit_message: str | None = None, timeout: float | None = None, edited_card: bool = False) -> str:
    """Upload a saved student to the Hub as ``repo_id``: weights, config, its model card (written
    from its run when the folder is a run's ``student/`` and has none; one edited since LiSER
    wrote it only with ``edited_card``: :func:`check_card`), its run's recipe as ``recipe.yaml``
    and, with ``onnx``, its ONNX export with the sidecar metadata (and the int8 export with its
    records, where ``liser export --quantize int8`` wrote them into the folder). Nothing is
    written into ``student_dir``: the upload is staged in a temporary folder, removed whatever
    happens. ``api``: a ``huggingface_hub.HfApi`` (or a stand-in with ``create_repo`` and
    ``upload_folder``). ``timeout``: seconds for each connection, answer or write (default
    ``LISER_HUB_TIMEOUT`` or 60). Returns the commit's URL (or the stand-in's answer). Network
    and Hub failures raise one-line :class:`HubError`."""
    from liser_common.rundir import run_recipe
    from liser_common.weights import HUB_ID

    src = Path(student_dir)
    if not (src / CONFIG_NAME).is_file() or not (src / WEIGHTS_NAME).is_file():
        raise UsageError(f"{src}: not a saved student (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    read_component_config(src, "student")  # refuses a teacher or a foreign folder, naming why
    from .checkpoint import weights_changed

    if weights_changed(src):  # its config.json, card and scores would be uploaded beside other weights
        raise UsageError(f"{src}/{WEIGHTS_NAME} is not the file LiSER saved there (its {CONFIG_NAME} records another "
                         "SHA-256): the model card and scores describe other weights; push the folder LiSER wrote")
    if not HUB_ID.fullmatch(repo_id):
        raise UsageError(f"{repo_id!r} is not a Hub repository id (org/name)")
    check_card(src, edited_card=edited_card)
    run = run_of(src)
    recipe = run_recipe(run) if run is not None else None  # refuses a config.yaml edited since the run
    seconds = hub_timeout(timeout)
    if api is None:
        from huggingface_hub import HfApi, constants

        api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
        if constants.is_offline_mode():  # before staging and exporting anything
            raise UsageError(f"{api.endpoint}: HF_HUB_OFFLINE is set, and liser push needs the network: "
                             "unset HF_HUB_OFFLINE and retry")
    endpoint = str(getattr(api, "endpoint", None) or "the Hugging Face Hub")
    probe = getattr(api, "repo_exists", None)  # a read: an unreachable Hub is said before seconds of export
    if onnx and callable(probe):
        with _hub_call(endpoint, repo_id, seconds):
            probe(repo_id, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="liser-push-") as tmp:
        stage = Path(tmp) / "student"
        stage.mkdir()
        for name in (CONFIG_NAME, WEIGHTS_NAME, "README.md"):
            if (src / name).is_file():
                shutil.copy2(src / name, stage / name)
        if not (stage / "README.md").is_file() and run is not None:
            from .card import model_card

            (stage / "README.md").write_text(model_card(run, repo_id=repo_id))
        if recipe:  # the recipe the card's fingerprint names, with the model (as the run wrote it)
            shutil.copy2(run / "config.yaml", stage / "recipe.yaml")
        carded = (stage / "README.md").is_file()
        if onnx:
            from .export import (
                _provenance,
                export,
                export_mismatch,
                file_sha256,
                sidecar,
                weights_digest,
            )

            ready = src / "student.onnx"  # `liser export` made it from these very weights: that file, not another export
            if ready.is_file() and export_mismatch(src, ready) is None and _format(sidecar(ready)) == "onnx":
                shutil.copy2(ready, stage / ready.name)
                shutil.copy2(sidecar(ready), stage / sidecar(ready).name)
            else:  # the run's record read where the folder lies (the staged copy has no run around it)
                export(stage, stage / "student.onnx", provenance=_provenance(src))
            try:  # the int8 file, only as LiSER wrote it from these weights (its sidecar records both digests)
                record = json.loads((src / INT8[1]).read_text())
                ok = (record.get("sha256") == file_sha256(src / INT8[0])
                      and record.get("weights_sha256") == weights_digest(src))
            except (OSError, ValueError, AttributeError):
                ok = False
            if ok and (src / INT8[2]).is_file():
                for name in INT8:
                    shutil.copy2(src / name, stage / name)
        name = json.loads((stage / CONFIG_NAME).read_text())["name"]
        with _hub_call(endpoint, repo_id, seconds):
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(stage),
                                     allow_patterns=list(PUSHED), commit_message=commit_message or f"LiSER student {name}")
    if not carded:  # said once it is up (a failed push says only why it failed)
        log.warning("%s has no model card (README.md) and is not a run's student/ folder: %s's page says nothing "
                    "about its data, protocol or scores", src, repo_id)
    return str(getattr(info, "commit_url", info))
