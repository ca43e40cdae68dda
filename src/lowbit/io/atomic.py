"""Atomic directory output: a checkpoint appears complete, or not at all.

Everything is written into a hidden temporary directory next to the target (same filesystem,
so the final ``os.replace`` is a rename), flushed to disk, then renamed into place. Any
exception — including KeyboardInterrupt — removes the temporary directory, so an interrupted
or failed save never leaves a partial output directory behind.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import InputError


class OutputExistsError(InputError):
    """The output path exists and overwriting was not asked for."""


def check_writable_target(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Fail early (before any expensive work) if ``out_dir`` cannot be written."""
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not overwrite:
        raise OutputExistsError(
            f"output {out} already exists (pass overwrite=True / --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a directory")
    parent = out.parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"output directory {parent} is not writable")
    return out


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on directories
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_directory(out_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it becomes ``out_dir``.

    With ``overwrite=True`` an existing ``out_dir`` is first renamed aside, the new directory is
    renamed in, and only then is the old one deleted: at every instant ``out_dir`` is either the
    complete old output or the complete new one (two renames, not one, hence "atomic-ish").
    """
    out = check_writable_target(out_dir, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise InputError(f"output directory {out.parent} is not writable ({e.strerror})") from None
    try:
        yield tmp
        _fsync_tree(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old / out.name, out)  # put the previous output back
                raise
            finally:
                if out.exists():
                    shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
