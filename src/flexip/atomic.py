"""Writes that never leave a half-written file or directory behind, with the modes any other tool gives.

Temporary files and directories are created with mode 0o666 / 0o777, so the kernel applies the user's umask
(and a directory's default ACL) exactly as for a plain `open` or `mkdir`: `tempfile.mkstemp`/`mkdtemp` would
make every output 0600/0700. An overwritten file keeps its mode, as `open(path, "w")` keeps it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

from .errors import FlexIPError


def _sibling(target: Path, kind: str) -> Path:
    """A fresh hidden sibling of `target` (`.tmp-*` or `.old-*`) naming the process and machine that own it."""
    return target.with_name(f".{kind}-{target.name}-{os.getpid()}-{socket.gethostname()}-{secrets.token_hex(4)}")


def _owner_is_gone(leftover: Path, target: Path, kind: str) -> bool:
    """Whether a `.tmp-*`/`.old-*` sibling of `target` was left by a process of this machine that no longer runs."""
    owner = leftover.name.removeprefix(f".{kind}-{target.name}-")
    pid, _, rest = owner.partition("-")
    host = rest.rpartition("-")[0]
    if not pid.isdigit() or host != socket.gethostname():
        return False  # another machine's (a shared disk) or another naming: not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def _recover(directory: Path) -> None:
    """Finish what a killed `atomic_directory` left: restore the old directory, or remove what is stale.

    Killed between its two renames, it leaves `.old-<name>-<pid>` and no `<name>`: the old directory is put
    back. With `<name>` present, an `.old-*` sibling is an old version already replaced (killed while deleting
    it). A `.tmp-*` sibling whose process is gone was never finished. Only leftovers of processes of this
    machine that no longer run are touched.
    """
    # A sibling whose process still runs is that process's business (it is between its renames right now).
    olds = [p for p in directory.parent.glob(f".old-{directory.name}-*") if _owner_is_gone(p, directory, "old")]
    if olds and not directory.exists():
        os.replace(olds.pop(), directory)
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in directory.parent.glob(f".tmp-{directory.name}-*"):
        if _owner_is_gone(tmp, directory, "tmp"):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `directory` (and everything in it).

    A crash while writing leaves the old directory (if any) untouched; a crash between the two renames that
    swap them is repaired by the next `atomic_directory` or `recover_directory` of the same path.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    _recover(directory)
    tmp = _sibling(directory, "tmp")
    tmp.mkdir(0o777)
    try:
        yield tmp
        if directory.exists():
            old = _sibling(directory, "old")
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_directory(directory: str | os.PathLike) -> Path:
    """`directory`, put back first if a killed `atomic_directory` left it aside; call before reading it."""
    directory = Path(directory)
    if directory.parent.is_dir():
        _recover(directory)
    return directory


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            with contextlib.suppress(FileNotFoundError):
                os.fchmod(f.fileno(), stat.S_IMODE(os.stat(path).st_mode))  # an overwritten file keeps its mode
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_writable(path: str | os.PathLike, name: str) -> Path:
    """Fail now, in one line naming `name`, if `path` (a file or folder to be written) cannot be created.

    Writes and removes a probe file in the nearest folder that exists, because only trying tells: permission
    bits do not show a read-only mount or /proc, and root passes every permission check.
    """
    path = Path(path)
    folder = path.parent if not path.is_dir() else path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise FlexIPError(f"{name} {path}: {folder} is a file, not a folder; choose another path")
    probe = folder / f".flexip-probe-{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.unlink(probe)
    except OSError as e:
        raise FlexIPError(f"{name} {path}: cannot write in {folder} ({e.strerror}); choose a folder you can write to") from e
    return path
