"""Run directories: ``runs/<name>/`` is created once and never overwritten; files are written
atomically (temporary file, then rename), so an interrupted run never leaves a half file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from anydistill.core.errors import RunDirError


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def free_name(root: Path, name: str) -> str:
    """``name``, or ``name-2``, ``name-3``... when a run of that name exists under ``root`` (never overwrite)."""
    candidate, n = name, 1
    while (Path(root) / candidate).exists():
        n += 1
        candidate = f"{name}-{n}"
    return candidate


class RunDir:
    """The output directory of one run.

    Layout: ``config.yaml`` (resolved recipe), ``run.json`` (versions, seed, command),
    ``metrics.json`` (model label -> metrics), ``report.md``, ``plots/``, ``checkpoints/<label>/``,
    ``logs/<label>/metrics.csv``.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, root: Path, name: str, *, is_main_process: bool = True) -> RunDir:
        """A new run directory ``root/name``; refuses to reuse an existing one.

        Non-main DDP processes get the same path without creating or checking it (rank 0 does).
        """
        path = Path(root) / name
        if is_main_process:
            try:
                path.mkdir(parents=True, exist_ok=False)
            except FileExistsError:
                raise RunDirError(
                    f"{path} already exists and is never overwritten: pick another name with --name, "
                    f"or continue it with `anydistill run --resume {path}`."
                ) from None
            except (NotADirectoryError, PermissionError) as error:
                raise RunDirError(f"cannot create the run directory {path} ({error.strerror}); choose another --runs root.") from None
        return cls(path)

    @classmethod
    def existing(cls, path: Path) -> RunDir:
        """An existing run directory, for resume or report."""
        run = cls(Path(path))
        if not (run.path / "config.yaml").is_file():
            raise RunDirError(f"{path} is not a run directory (no config.yaml): give the path of a run under runs/.")
        return run

    def checkpoint_dir(self, label: str) -> Path:
        return self.path / "checkpoints" / label

    def last_checkpoint(self, label: str) -> Path | None:
        """The last epoch-end checkpoint of ``label``, if training was interrupted after one."""
        last = self.checkpoint_dir(label) / "last.ckpt"
        return last if last.is_file() else None

    def write_config(self, resolved: dict[str, Any]) -> None:
        write_atomic(self.path / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))

    def write_json(self, name: str, payload: dict[str, Any]) -> None:
        write_atomic(self.path / name, json.dumps(payload, indent=2) + "\n")

    def read_metrics(self) -> dict[str, dict[str, Any]]:
        file = self.path / "metrics.json"
        if not file.is_file():
            return {}
        try:
            metrics = json.loads(file.read_text())
        except (ValueError, UnicodeDecodeError):
            metrics = None
        if not isinstance(metrics, dict) or not all(isinstance(v, dict) for v in metrics.values()):
            raise RunDirError(f"{file} is corrupt: delete it to re-evaluate every model on resume.")
        return metrics
