"""The run directory policy: a workdir holds one run, continued only with the same config."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Mapping
from typing import Any

from .config import Config

FORMAT = 1  # bump when the workdir layout changes


class WorkdirError(ValueError):
    """The workdir holds another run (or other files) and neither resume nor overwrite is set."""


def check_resumable(workdir: str | os.PathLike) -> pathlib.Path:
    """``workdir`` as a path if it holds a run to continue; cheap, so callers check it
    before loading data (a mistyped ``--resume --workdir`` must not start hours of work).

    Raises:
      WorkdirError: ``workdir`` does not exist or holds no ``config.json``.
    """
    path = pathlib.Path(workdir)
    if not (path / "config.json").is_file():
        why = "does not exist" if not path.exists() else "holds no run (no config.json)"
        raise WorkdirError(
            f"--resume: workdir {str(path)!r} {why}; nothing to continue. Check the path, "
            "or leave out --resume to start a new run there"
        )
    return path


def prepare_workdir(
    workdir: str | os.PathLike, config: Config, *, resume: bool = False, overwrite: bool = False
) -> pathlib.Path:
    """Create ``workdir`` or check that it may be used; writes ``config.json``.

    A workdir holding a run continues only with ``resume`` (and the same config) and is
    emptied only with ``overwrite``; a non-empty directory that holds no run is refused,
    and so is ``resume`` without a run to continue (:func:`check_resumable`).
    A stored config that lacks fields added since it was written counts as having their
    defaults, so new fields do not make an old run "a different run".

    Raises:
      WorkdirError: with the reason and the flag to use.
    """
    if resume and overwrite:
        raise WorkdirError("give resume or overwrite, not both")
    if resume:
        check_resumable(workdir)
    path = pathlib.Path(workdir)
    cfg_file = path / "config.json"
    wanted = {"format": FORMAT, "config": config.to_dict()}
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"workdir {str(path)!r} exists and is not a directory")
    if cfg_file.exists():
        stored = json.loads(cfg_file.read_text())
        if overwrite:
            shutil.rmtree(path)
        elif not resume:
            raise WorkdirError(
                f"workdir {str(path)!r} already holds a run; pass --resume to continue it "
                "(same config) or --overwrite to delete it and start again"
            )
        elif (stored := _with_defaults(stored)) != wanted:
            diff = _config_diff(stored.get("config", {}), wanted["config"])
            raise WorkdirError(
                f"workdir {str(path)!r} holds a different run ({diff}); use another workdir "
                "or --overwrite to delete it"
            )
    elif path.exists() and any(path.iterdir()):
        raise WorkdirError(
            f"workdir {str(path)!r} is not empty and holds no qareg run; choose another "
            "(nothing is deleted)"
        )
    path.mkdir(parents=True, exist_ok=True)
    if not cfg_file.exists():
        cfg_file.write_text(json.dumps(wanted, indent=1) + "\n")
    return path


def _with_defaults(stored: Mapping[str, Any]) -> dict[str, Any]:
    """``stored`` (a config.json) with the current defaults of the fields it lacks."""
    config = stored.get("config")
    if not isinstance(config, Mapping):
        return dict(stored)
    return {**stored, "config": {**Config().to_dict(), **config}}


def _config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys) or "format differs"
