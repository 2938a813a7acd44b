"""Saving and loading components: safetensors weights + a JSON config, written atomically.

A component directory holds ``config.json`` (registry kind and name, the options it was built
with, its label space) and ``model.safetensors``. No pickle is read or written anywhere.

A module may name state-dict key prefixes in ``checkpoint_exclude`` (e.g. ``("backbone.",)``
for a frozen pretrained backbone that its options reload from the hub id or directory it came
from): those weights are neither saved nor required when loading.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from liser_cache.files import (  # noqa: F401 - part of this module's API too
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    private_tempdir,
    umask_mode,
)
from liser_common.weights import canonical_header, read_tensors, resolve_source  # noqa: F401 - part of this module's API too

from .errors import UsageError
from .labels import LabelSpace

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: The safetensors header entry that marks weights LiSER wrote: JSON with the format version, the
#: component's kind and name and, for a teacher, whether it was saved with its card and that
#: card's fit sets (in full), plus where it was fitted (or reused from) when a run saved it. It
#: travels with ``model.safetensors`` wherever the file is copied or renamed (docs/store.md).
MARKER_KEY = "liser"


def _sha256_file(path: Path) -> str:
    from liser_common.trainstate import (
        _sha256,  # the one file hash (training checkpoints' markers use it)
    )

    return _sha256(Path(path))


def weights_changed(directory: str | Path) -> bool:
    """Whether a saved component's weights differ from the SHA-256 its ``config.json`` records
    (False for checkpoints written before LiSER recorded it)."""
    directory = Path(directory)
    try:
        recorded = json.loads((directory / CONFIG_NAME).read_text()).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(recorded, str) and recorded != _sha256_file(directory / WEIGHTS_NAME)


def save_component(
    module: torch.nn.Module,
    directory: str | Path,
    *,
    kind: str,
    name: str,
    options: dict,
    label_space: LabelSpace,
    extra: dict | None = None,
    provenance: dict | None = None,
    plugin: str | None = None,
    package: dict | None = None,
) -> Path:
    """Save ``module`` into ``directory`` atomically (built in a temporary sibling, then renamed).
    ``plugin``: the plugin that registered it, ``package`` the package that provides that plugin
    (``{"name", "version"}``; ``config.json`` records both: :func:`load_component` rebuilds that
    plugin's component, never another package's of the same name, and says when the version differs).

    The weights' header carries LiSER's marker (:data:`MARKER_KEY`): for a teacher, the fit sets
    of the card in ``extra["card"]`` and ``provenance`` (e.g. ``fitted_in``, ``reused_from``); for
    every component, what ``config.json`` says it is (:data:`DEFINING_KEYS`): a hand edit of
    ``config.json`` is found on load instead of rebuilding another model over these weights."""
    directory = Path(directory)
    config = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "name": name,
        **({"plugin": plugin} if plugin else {}),
        **({"package": dict(package)} if package else {}),
        "options": options,
        "label_space": label_space.to_dict(),
        **(extra or {}),
    }
    marker = {"format_version": FORMAT_VERSION, "kind": kind, "name": name,
              "config": json.loads(json.dumps({k: config[k] for k in DEFINING_KEYS if k in config}, default=str))}
    if kind == "teacher":
        card = (extra or {}).get("card")
        marker |= {"card": isinstance(card, dict), "fit_sets": list((card or {}).get("fit_sets") or [])}
    marker |= provenance or {}
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_tempdir(directory.parent, f".{directory.name}.")
    try:
        exclude = tuple(getattr(module, "checkpoint_exclude", ()))
        state = {
            k: v.detach().contiguous().cpu()
            for k, v in module.state_dict().items()
            if not (exclude and k.startswith(exclude))
        }
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", MARKER_KEY: json.dumps(marker, sort_keys=True)})
        canonical_header(tmp / WEIGHTS_NAME)  # the same weights and marker, the same bytes
        os.chmod(tmp / WEIGHTS_NAME, umask_mode())  # safetensors writes 0600 whatever the umask
        config["weights_sha256"] = _sha256_file(tmp / WEIGHTS_NAME)  # what a reader can check the weights against
        atomic_write_json(tmp / CONFIG_NAME, config)
        old = None
        if directory.exists():
            for extra in directory.iterdir():  # what else is in the folder is not ours: it stays
                if extra.name not in (WEIGHTS_NAME, CONFIG_NAME) and not (tmp / extra.name).exists():
                    # copied, not moved: if anything fails before the swap, the originals are untouched
                    if extra.is_dir() and not extra.is_symlink():
                        shutil.copytree(extra, tmp / extra.name, symlinks=True)
                    else:
                        shutil.copy2(extra, tmp / extra.name, follow_symlinks=False)
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def read_component_config(directory: str | Path, kind: str | None = None) -> dict:
    directory = Path(directory)
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise UsageError(
            f"{directory}: not a LiSER checkpoint (needs {CONFIG_NAME} and {WEIGHTS_NAME})"
        )
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{cfg_path}: invalid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise UsageError(f"{cfg_path}: a component config is a JSON object, not a {type(config).__name__}")
    if kind is not None and config.get("kind") != kind:
        raise UsageError(f"{directory}: holds a {config.get('kind')!r}, expected a {kind!r}")
    return config


def read_marker(directory: str | Path) -> dict | None:
    """LiSER's marker in a checkpoint's ``model.safetensors`` header (:data:`MARKER_KEY`), or
    None for weights LiSER did not write (or wrote before it marked them). Reads no tensor."""
    from safetensors import SafetensorError, safe_open

    path = Path(directory) / WEIGHTS_NAME
    try:
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get(MARKER_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a valid safetensors file ({exc})") from None
    if text is None:
        return None
    try:
        marker = json.loads(text)
    except ValueError:
        marker = None
    if not isinstance(marker, dict):
        raise UsageError(f"{path}: its {MARKER_KEY!r} header entry (LiSER's provenance) is not a JSON object: damaged")
    return marker


def load_weights(module: torch.nn.Module, directory: str | Path, what: str = "") -> None:
    """Load a component directory's weights into ``module`` (strictly, but for the state-dict
    prefixes it names in ``checkpoint_exclude``); weights that are NaN or Inf are refused."""
    directory = Path(directory)
    state = read_tensors(directory / WEIGHTS_NAME)
    bad = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise UsageError(f"{directory / WEIGHTS_NAME}: non-finite (NaN/Inf) weights in {bad[:3]}: the model would predict nonsense")
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        first = next((ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln), str(exc).splitlines()[0])
        raise UsageError(f"{directory / WEIGHTS_NAME}: weights do not fit {what or type(module).__name__}: {first}") from None
    exclude = tuple(getattr(module, "checkpoint_exclude", ()))
    missing = [k for k in missing if not (exclude and k.startswith(exclude))]
    if missing or unexpected:
        raise UsageError(
            f"{directory}: weights do not fit {what or type(module).__name__} "
            f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})"
        )


#: the ``config.json`` keys that say which model the weights are: kept in the weights' marker too
DEFINING_KEYS = ("kind", "name", "plugin", "options", "label_space", "defaults", "sample_rate")


def check_config_against_marker(directory: Path, config: dict) -> None:
    """Refuse a ``config.json`` whose defining keys (:data:`DEFINING_KEYS`) differ from what the
    weights were saved with (their marker): a hand edit of the label order, an option or the
    component's name rebuilt another model over the same weights -- the same probabilities
    printed under other emotion names, with no warning. Weights saved before markers held the
    config are not checked."""
    try:
        marker = read_marker(directory) or {}
    except UsageError:  # weights that are no safetensors (a pickle): loading them says what they are
        return
    saved = marker.get("config")
    if not isinstance(saved, dict):
        return
    now = json.loads(json.dumps({k: config.get(k) for k in saved}, default=str))
    differ = [k for k in saved if now.get(k) != saved[k]]
    if differ:
        k = differ[0]
        raise UsageError(
            f"{directory / CONFIG_NAME}: {', '.join(differ)} differ{'s' if len(differ) == 1 else ''} from what "
            f"{WEIGHTS_NAME} was saved with ({k}: saved {_short(saved[k])}, config.json now {_short(now.get(k))}): "
            "config.json was edited after LiSER saved it, and would rebuild another model over these weights; "
            "restore it (the weights' header keeps the saved values)"
        )


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_package(entry, config: dict, where: Path, kind: str) -> None:
    """A saved component's package against the one that provides its plugin here: another
    package under the same plugin name is refused (not this component); another version of it
    is said (its code may compute other outputs from the same weights)."""
    import logging

    saved = config.get("package")
    if not isinstance(saved, dict) or not entry.package or saved.get("name") == "liser" and entry.first_party:
        return
    if saved.get("name") != entry.package.get("name"):
        raise UsageError(
            f"{where}: a {kind} {config.get('name')!r} of plugin {config.get('plugin')!r} from package "
            f"{saved.get('name')!r}; plugin {entry.plugin!r} here comes from package {entry.package.get('name')!r}: not "
            f"this component (install {saved.get('name')} {saved.get('version', '')})"
        )
    if saved.get("version") != entry.package.get("version"):
        logging.getLogger("liser").warning(
            "%s: saved with %s %s, loaded with %s %s: its outputs may differ from the ones it was scored with",
            where, saved.get("name"), saved.get("version"), entry.package.get("name"), entry.package.get("version"))


def recorded_entry(registry, config: dict, where: Path, kind: str):
    """The registry entry a saved component's ``config.json`` means: the component of the plugin
    it records (refused when that plugin is not loaded: a first-party or another package's
    component of the same name is not it); for folders that record none, the name as a record
    reads it (:meth:`Registry.get_recorded`)."""
    from ._registry import bare_name

    name, plugin = config["name"], config.get("plugin")
    if not plugin:
        return registry.get_recorded(name)
    mine = [e for e in registry.candidates(bare_name(name)) if e.plugin == plugin]
    if not mine:
        others = [e.qualified for e in registry.candidates(bare_name(name))]
        raise UsageError(
            f"{where}: a {kind} {bare_name(name)!r} of plugin {plugin!r}, which is not loaded here"
            + (f" (the name is also {', '.join(others)}: not this component)" if others else "")
            + "; install the package that provides it"
        )
    return mine[0]


def _recorded_defaults(factory, recorded: Any, options: dict, where: Path, kind: str, name: str) -> dict:
    """The factory defaults a saved component was built with (``config.json`` ``defaults``), for
    the parameters the factory still takes: the component is rebuilt as it was, whatever the
    plugin's defaults are now. One it no longer takes is left out, with a warning."""
    import inspect
    import logging

    if not isinstance(recorded, dict):
        return {}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    anything = any(p.kind == p.VAR_KEYWORD for p in params.values())
    keep = {k: v for k, v in recorded.items() if k not in options and (k in params or anything)}
    gone = sorted(k for k in recorded if k not in options and k not in keep)
    if gone:
        logging.getLogger("liser").warning(
            "%s: %s %r was built with %s, which it no longer takes: rebuilt without (its outputs may differ)",
            where, kind, name, ", ".join(f"{k}={recorded[k]!r}" for k in gone))
    return keep


def load_component(directory: str | Path, registry, *, kind: str, **inject: Any) -> torch.nn.Module:
    """Rebuild a saved component through ``registry`` and load its weights (strictly). A
    ``config.json`` that does not describe a component of ``registry`` is a one-line error."""
    directory = Path(directory)
    config = read_component_config(directory, kind)
    cfg_path = directory / CONFIG_NAME
    name, options, space = config.get("name"), config.get("options"), config.get("label_space")
    if not isinstance(name, str) or not isinstance(options, dict):
        raise UsageError(f"{cfg_path}: needs 'name' (text) and 'options' (a mapping), got {name!r} and {options!r}")
    try:
        label_space = LabelSpace.from_dict(space)
    except (TypeError, KeyError, ValueError) as exc:
        raise UsageError(f"{cfg_path}: 'label_space' is not a label space ({exc})") from None
    check_config_against_marker(directory, config)
    entry = recorded_entry(registry, config, cfg_path, kind)
    check_package(entry, config, cfg_path, kind)
    defaults = _recorded_defaults(entry.factory, config.get("defaults"), options, cfg_path, kind, name)
    try:
        module = entry.factory(label_space=label_space, **defaults, **options, **inject)
    except UsageError:
        raise
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{cfg_path}: {kind} {name!r} rejects the saved options: {exc}") from None
    load_weights(module, directory, f"{kind} {config['name']!r}")
    module.liser_spec = {"name": config["name"], "options": config["options"], "plugin": entry.plugin, "defaults": defaults,
                         "package": dict(entry.package)}
    if kind == "student" and isinstance(config.get("train_seconds"), (int, float)):
        module.liser_spec["train_seconds"] = config["train_seconds"]  # its window: saved again with it
    module.liser_checkpoint = str(directory)  # where it came from: the leak guard reads its fit sets there
    if kind == "teacher" and isinstance(config.get("card"), dict):  # provenance comes back with it
        from .components import TeacherCard

        module.card = TeacherCard.from_dict(config["card"])
    return module
