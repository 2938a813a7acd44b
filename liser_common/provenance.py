"""What a result was computed from: the comparable part of a resolved recipe, its fingerprint,
and the keys where two recipes differ.

The same definitions serve resuming a run (same recipe: continue; another: refuse, naming the
keys), ``liser bench`` (a combination whose recipe changed is stale and rerun) and
``liser summarize`` (runs are averaged only within one recipe).

Example::

    >>> diff_keys({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}})
    ['b.c']
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

#: Recipe keys a resumed run may change: where it runs and reports to and how many CPU threads
#: and decoding workers it uses, not what it computes. A resume that changes them is recorded
#: per stage in ``state/run.json`` (``stage_settings``), never into the recorded recipe. (On CPU
#: another thread count changes the last bits of sums: bit-exact resume needs the same count.)
RESUME_FREE_KEYS = ("run_dir", "device", "loggers", "threads", "data.workers", "data.feature_cache")
#: Keys that do not change results beyond the last bits: where a run goes and reports to, the
#: thread count, the run's name, where teacher outputs are cached and whether fixed frontends'
#: features are (bit-identical either way, tests/test_feature_cache.py); what results are
#: grouped and compared by. Not ``store_dtype``: float16 targets train another student.
RESULT_FREE_KEYS = ("run_dir", "device", "loggers", "threads", "name", "store", "data.feature_cache")


def plain_config(cfg: Any) -> dict[str, Any]:
    """A DictConfig (or mapping) as plain, resolved containers with enums as their values."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return json.loads(json.dumps(cfg, default=str))


def comparable(cfg: Any, drop: Iterable[str] = RESUME_FREE_KEYS) -> dict[str, Any]:
    """The recipe without ``drop`` (dotted keys: ``data.options.fold`` drops one leaf)."""
    d = plain_config(cfg)
    for key in drop:
        *parents, leaf = key.split(".")
        node = d
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(leaf, None)
    return d


@functools.cache
def _defaults(schema: type) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(schema), resolve=False, enum_to_str=True, throw_on_missing=False)


def _unwrap(typ: Any) -> Any:
    """``X`` of ``X | None``."""
    import types
    import typing

    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        return args[0] if len(args) == 1 else typ
    return typ


def without_defaults(value: Any, schema: Any) -> Any:
    """``value`` (a plain recipe, or part of one, of dataclass type ``schema``) less every field
    at its schema default, recursively (also in the elements of typed lists: each teacher block).
    A key LiSER adds later, with a default that keeps today's behaviour, then leaves fingerprints,
    and so finished runs and leaderboard rows, as they were. (Free-form ``options`` are kept as
    written: they have no schema.)"""
    import dataclasses
    import typing

    schema = _unwrap(schema)
    if isinstance(value, list) and typing.get_origin(schema) is list:
        (elem,) = typing.get_args(schema) or (None,)
        return [without_defaults(v, elem) for v in value]
    if not (isinstance(value, dict) and dataclasses.is_dataclass(schema)):
        return value
    defaults, hints = _defaults(schema), typing.get_type_hints(schema)
    return {k: without_defaults(v, hints.get(k)) for k, v in value.items() if k not in defaults or v != defaults[k]}


def recipe_view(cfg: Any, drop: Iterable[str], schema: type | None = None) -> dict[str, Any]:
    """What two recipes are compared by: ``cfg`` (a DictConfig, or a recipe recorded as plain
    containers with its ``schema``) less ``drop`` and less what is at its schema default."""
    from omegaconf import DictConfig, OmegaConf

    if schema is None and isinstance(cfg, DictConfig):
        schema = OmegaConf.get_type(cfg)
    return without_defaults(comparable(cfg, drop), schema)


def fingerprint(cfg: Any, versions: Mapping[str, str] | None = None, drop: Iterable[str] = RESULT_FREE_KEYS) -> str:
    """sha256 (hex) of the comparable recipe (:func:`recipe_view`: less what is at its schema
    default) and the code versions that run it."""
    body = {"recipe": recipe_view(cfg, drop), "versions": dict(sorted((versions or {}).items()))}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted key paths where two plain configs differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):  # down to the item: distil.losses.0.weight
        return [k for i, (x, y) in enumerate(zip(a, b)) for k in diff_keys(x, y, f"{prefix}{i}.")]
    return [] if a == b else [prefix.rstrip(".") or "(root)"]


# -- which code computed a result --------------------------------------------------------------
#: seconds a ``git`` call may take before the commit is given up as unknown
GIT_TIMEOUT = 3.0


@functools.cache
def source_state(directory: str) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the git checkout that holds
    ``directory`` (a package's folder); both None when it is not in a checkout, git is missing
    or slow. Cached per process: a checkout does not change under a running process that counts."""
    import subprocess

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", directory, *args], capture_output=True, text=True,
                                  timeout=GIT_TIMEOUT, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = (git("rev-parse", "HEAD") or "").strip() or None
    if commit is None:
        return {"commit": None, "dirty": None}
    # a folder the checkout does not track (a virtualenv's site-packages inside a clone, ignored)
    # is not that commit's code: no commit, so a package there is named by its files instead
    if not (git("ls-files", "--", ".") or "").strip():
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return {"commit": commit, "dirty": None if status is None else bool(status.strip())}


def code_version() -> dict[str, Any]:
    """LiSER's code: ``{"liser": "0.1.0", "commit": sha or None, "dirty": bool or None}``; the
    commit and dirty flag come from the git checkout LiSER runs from (None when it is installed
    from a wheel, or git is missing)."""
    import liser_common  # every LiSER package lives in one checkout; liser_core is above this layer

    root = os.path.dirname(os.path.dirname(os.path.abspath(liser_common.__file__)))
    return {"liser": liser_common.__version__, **source_state(root)}


def package_code(version: str, directory: str | None) -> dict[str, Any]:
    """The same for another package (a plugin's): ``{"version", "commit", "dirty"}``."""
    state = source_state(directory) if directory else {"commit": None, "dirty": None}
    return {"version": version, **state}


#: files of a plugin package hashed whole; a larger one counts by name and size (weights shipped in
#: a package: a reinstall is not re-read every time plugins load)
SOURCE_FILE_LIMIT = 8 << 20
#: a package of more files than this is not digested (its version alone names it)
SOURCE_FILES_MAX = 5000


@functools.cache
def source_digest(origin: str) -> str | None:
    """sha256 (hex) of a package's files (``origin``: its ``__init__.py``; for a single-module
    plugin, that file alone), their paths relative to it and contents, bytecode caches left out;
    None when it cannot be read or has more than :data:`SOURCE_FILES_MAX` files. What names a
    plugin's code where no git commit does (a wheel): the same version edited or reinstalled
    with other code is other code. Cached per process."""
    from pathlib import Path

    path = Path(origin)
    try:
        if path.name == "__init__.py":
            files = sorted(p for p in path.parent.rglob("*")
                           if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"))
            root = path.parent
        else:
            files, root = [path], path.parent
        if len(files) > SOURCE_FILES_MAX:
            return None
        h = hashlib.sha256()
        for f in files:
            size = f.stat().st_size
            h.update(f"{f.relative_to(root).as_posix()}\0{size}\0".encode())
            if size <= SOURCE_FILE_LIMIT:
                h.update(f.read_bytes())
        return h.hexdigest()
    except (OSError, ValueError):
        return None


def code_label(entry: Mapping[str, Any]) -> str:
    """``0.1.0@1a2b3c4d5e6f`` (``+dirty`` when the checkout had uncommitted changes; no ``@``
    when the commit is unknown): how tables and records name one package's code."""
    version = entry.get("liser") or entry.get("version") or "?"
    commit = entry.get("commit")
    return f"{version}@{commit[:12]}{'+dirty' if entry.get('dirty') else ''}" if commit else str(version)


def code_string(sources: Mapping[str, Mapping[str, Any]]) -> str:
    """The ``code`` column of a results row: ``liser=0.1.0@1a2b3c4d5e6f+dirty;pkg=1.2@...``."""
    return ";".join(f"{name}={code_label(entry)}" for name, entry in sorted(sources.items()))


def code_identity(code: str) -> str:
    """What makes two ``code`` strings *other code* for each other: versions and commits. The
    dirty flag is shown but not compared -- an uncommitted edit would otherwise make every row
    stale on every save; commit before a run whose rows should count as a separate version."""
    return code.replace("+dirty", "")


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes, read in blocks: the project's one file hash
    (checkpoint markers, weights digests, export sidecars, inputs by content)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=256)
def _cached_digest(path: str, mtime_ns: int, size: int, inode: int) -> str:
    return sha256_file(path)


def _file_digest(path: str) -> str:
    """A file's SHA-256, remembered per (path, mtime, size, inode) -- except for a file changed
    in the last two seconds: file times are coarse (a clock tick), so a second edit of the same
    size within one tick would look unchanged (git's "racy" case); such a file is read again."""
    import time

    st = os.stat(path)
    if time.time_ns() - st.st_mtime_ns < 2_000_000_000:
        return sha256_file(path)
    return _cached_digest(path, st.st_mtime_ns, st.st_size, st.st_ino)


def path_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and contents, sorted; hidden
    files left out); "missing" when there is none. Remembered per file (:func:`_file_digest`)."""
    p = Path(path).expanduser()
    if p.is_file():
        return _file_digest(str(p))
    if not p.is_dir():
        return "missing"
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file() and not any(part.startswith(".") for part in q.relative_to(p).parts)):
        h.update(f"{f.relative_to(p).as_posix()}\0{_file_digest(str(f))}\n".encode())
    return h.hexdigest()


def hub_snapshot(value: str, revision: str | None = None) -> str | None:
    """The commit a Hub model id resolves to in the local Hugging Face cache: what loading it
    reads there (``refs/<revision>``, ``main`` by default; a commit given as the revision is
    itself); None when ``value`` is no Hub id or the cache does not hold it."""
    from liser_common.weights import HUB_ID

    # the one Hub-id pattern; timm writes an id as hf-hub:ORG/NAME
    repo_id = value.split(":", 1)[1] if value.startswith(("hf-hub:", "hf_hub:")) else value
    if not HUB_ID.fullmatch(repo_id):
        return None
    try:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name
    except ImportError:
        return None
    folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    rev = str(revision or "main")
    if re.fullmatch(r"[0-9a-f]{40}", rev):
        return rev if (folder / "snapshots" / rev).is_dir() else None
    try:
        commit = (folder / "refs" / rev).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return commit or None


def input_digests(cfg: Any) -> dict[str, str]:
    """What a recipe names by path and a run reads whole, by content (:func:`path_digest`):
    each teacher checkpoint (``teachers.N.checkpoint``) and each component option that names a
    local file or folder (``teachers.N.options.model`` as a local model folder, a student's
    weights file...); an option naming a Hub model id, by the commit the local Hugging Face
    cache resolves it to (``hub@COMMIT``, :func:`hub_snapshot`: a newer revision downloaded
    since is another input). A recipe records only the name: a file swapped under it changes
    the results, so runs record these (``state/run.json`` ``inputs``) and compare them before
    reusing, resuming or averaging."""
    d = plain_config(cfg)
    out = {}
    blocks = [(f"teachers.{i}", t) for i, t in enumerate(d.get("teachers") or [])] + [("student", d.get("student"))]
    for key, block in blocks:
        if not isinstance(block, dict):
            continue
        if block.get("checkpoint"):
            out[f"{key}.checkpoint"] = path_digest(block["checkpoint"])
        options = block.get("options") or {}
        for name, value in options.items():
            if not isinstance(value, str) or not value:
                continue
            if os.path.exists(os.path.expanduser(value)):
                out[f"{key}.options.{name}"] = path_digest(value)
            elif commit := hub_snapshot(value, options.get("revision") if isinstance(options.get("revision"), str) else None):
                out[f"{key}.options.{name}"] = f"hub@{commit}"
    return out


def changed_inputs(recorded: Any, now: Mapping[str, str]) -> list[str]:
    """The keys of :func:`input_digests` whose content differs from a run's record (none when
    the run recorded nothing: runs older than the record)."""
    if not isinstance(recorded, dict):
        return []
    return sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))

