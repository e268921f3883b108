"""The one I/O module: bounded reads of a user's files, SHA-256 of a file, and the one atomic writer.

**Reading with bounds** (regular files only, never more than a stated number of bytes).

A path can name something that never ends (``/dev/zero``), never answers (a FIFO nobody writes to)
or is far larger than any file of its kind. :func:`open_regular` opens without blocking
(``O_NONBLOCK``: opening a FIFO for reading would wait for a writer), refuses anything that is not a
regular file once open (``fstat``, so a symlink to a device is judged by what it points to, with no
race between the check and the read) and refuses a file larger than ``limit`` bytes before reading
it. :func:`read_bounded` reads such a file whole. Both raise the caller's error class (a
:class:`~xoresnet.errors.XoresnetError`, one line) naming ``what`` the file is for.

**Writing.** :func:`atomic_write` is how every file of ours is written (checkpoints, artifacts, reports, the
Lava worker's result): a temporary file in the same folder, flushed to disk (``fsync``), given the mode
``open()`` would give it (``0o666`` less the umask), then renamed over the target, so a reader sees the old
file or the new one and never a partial one. :func:`file_sha256` is the digest the manifests record.

Standard library only: the Lava worker imports it and must never load torch.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

from .errors import DataError, XoresnetError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


def size_text(n: float) -> str:
    """``n`` bytes for a message: ``"512 B"``, ``"3.0 MiB"``, ``"2.5 GiB"``."""
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike, *, what: str, limit: int,
                 error: type[XoresnetError] = DataError) -> BinaryIO:
    """``path`` opened for binary reading, when it is a regular file of at most ``limit`` bytes.

    ``what`` names the file in messages (``"energy table x.json"``). Raises ``error`` (one line) when
    the file is missing or unreadable, is not a regular file (a FIFO, a device, a folder; after
    following symlinks) or is larger than ``limit`` bytes. The caller closes the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{what}: does not exist") from None
    except OSError as e:
        raise error(f"{what}: cannot be read ({type(e).__name__}: {e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what}: is {_kind(st.st_mode)}; a regular file is needed")
        if st.st_size > limit:
            raise error(f"{what}: {size_text(st.st_size)} is larger than the {size_text(limit)} such a file may have")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(path: str | os.PathLike, *, what: str, limit: int, error: type[XoresnetError] = DataError) -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_regular`); never more than ``limit``,
    even when the file grows while it is read."""
    with open_regular(path, what=what, limit=limit, error=error) as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise error(f"{what}: cannot be read ({type(e).__name__}: {e.strerror or e})") from None
    if len(data) > limit:
        raise error(f"{what}: grew beyond {size_text(limit)} while it was read")
    return data



def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file at ``path`` (read in chunks: ``hashlib.file_digest``)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically and durably (module docstring): the
    folder must exist; the file gets mode ``0o666 & ~umask``. Returns ``path`` as a :class:`~pathlib.Path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates the file private; follow the umask like open() does
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
