"""Atomic file writing: a crash never leaves a half-written result behind."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator


def _create_part(target: Path) -> Path:
    """A new empty ``.<name>.<random>.part`` beside ``target``, created with mode 0666 minus the umask.

    ``tempfile.mkstemp`` would create it 0600 and every writer (h5py, PIL,
    matplotlib, ffmpeg) truncates rather than re-creates it, so the result would
    stay unreadable to the group whatever the umask; ``os.open`` lets the kernel
    apply the umask (and any default ACL) as for an ordinary file.
    """
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.part"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {target}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file is removed if the body raises, so an earlier file at
    ``path`` stays untouched.  Parent folders are created.  The file's mode
    follows the umask (0644 under the usual 022), as for any new file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_part(target)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
