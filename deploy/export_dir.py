"""The export folder: its file names, ``manifest.json`` (the parity certificate), atomic writing.

``xoresnet-export --out DIR`` writes, for the Lava targets (``loihi2``, ``lava-sim``):

==========================  ===============================================================
``model.nir``               the float NIR graph (``nir.write``)
``integer_graph.h5``        the scheduled Loihi integer graph (:mod:`calibration.integer_graph`)
``calibration.json``        the quantization spec and the per-population calibration report
``lava_graph.json``         the Lava process graph: processes, connections, parameters, delays
``parity.json``             the parity verdict of Lava against the integer reference
``report.json``, ``.html``  the resource / energy / spike report (:mod:`hw_targets.report`)
``manifest.json``           checkpoint and artifact SHA-256s, versions, data, seeds, verdict
==========================  ===============================================================

The ``onnx`` target writes ``model.onnx`` and ``onnx_check.json`` (:mod:`hw_targets.onnx`) and its
manifest. Writes are atomic (:class:`ArtifactDir`); dispatch runs a folder only while
:func:`read_parity_certificate` holds for it.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from xoresnet.checkpoint import file_sha256
from xoresnet.errors import ParityError, UsageError

NIR_FILE = "model.nir"
GRAPH_FILE = "integer_graph.h5"
CALIBRATION_FILE = "calibration.json"
LAVA_GRAPH_FILE = "lava_graph.json"
PARITY_FILE = "parity.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "xoresnet-export"
MANIFEST_VERSION = 2
#: The largest manifest or failure file read back (bytes); ours are a few kB.
MAX_MANIFEST_BYTES = 1 << 20


#: Every file name an export of ours writes into its folder (Lava targets and ``onnx``); an existing
#: ``--out`` folder holding only these, with a manifest of ours, is an earlier export and may be replaced.
REPORT_JSON_FILE = "report.json"
REPORT_HTML_FILE = "report.html"
ONNX_MODEL_FILE = "model.onnx"
ONNX_CHECK_FILE = "onnx_check.json"
ARTIFACT_NAMES = frozenset({NIR_FILE, GRAPH_FILE, CALIBRATION_FILE, LAVA_GRAPH_FILE, PARITY_FILE, MANIFEST_FILE,
                            REPORT_JSON_FILE, REPORT_HTML_FILE, ONNX_MODEL_FILE, ONNX_CHECK_FILE})
FAILURE_FORMAT = "xoresnet-parity-failure"
#: Marks a temporary artifact folder as ours, so that a later export may remove it when its process died.
PARTIAL_MARKER = ".xoresnet-partial"

_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux ``renameat2(src, dst, flags)``: True when done; False where the platform, libc or file system
    lacks it (the caller falls back); any other failure raises :class:`OSError`."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_manifest(folder: Path) -> Optional[dict[str, Any]]:
    """``folder``'s ``manifest.json`` when it is a regular file holding a manifest of ours, else None."""
    path = folder / MANIFEST_FILE
    try:
        if not stat.S_ISREG(path.lstat().st_mode) or path.lstat().st_size > MAX_MANIFEST_BYTES:
            return None
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT else None


def foreign_entries(folder: Path) -> list[str]:
    """The entries of ``folder`` an export of ours did not write: every name that is not one of
    :data:`ARTIFACT_NAMES` or is not a regular file (symlinks and folders included), sorted."""
    out = []
    for entry in os.scandir(folder):
        if entry.name not in ARTIFACT_NAMES or not entry.is_file(follow_symlinks=False):
            out.append(entry.name)
    return sorted(out)


def _remove_our_files(folder: Path) -> list[str]:
    """Delete the files of ours in ``folder`` (regular files named in :data:`ARTIFACT_NAMES`), then the folder
    if it is empty. Returns the entries left (never deleted: we did not write them)."""
    for entry in os.scandir(folder):
        if entry.name in ARTIFACT_NAMES and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
    left = sorted(os.listdir(folder))
    if not left:
        os.rmdir(folder)
    return left


def resolve_out(out: Path) -> Path:
    """The real folder ``--out`` names: symlinks followed, ``.`` and ``..`` resolved. Raises
    :class:`~xoresnet.errors.UsageError` (exit 2) for a dangling symlink or a path that is not a folder."""
    if out.is_symlink() and not out.exists():
        raise UsageError(f"--out {out}: a symlink to {os.readlink(out)}, which does not exist")
    real = Path(os.path.realpath(out))
    if real.exists() and not real.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if real == Path(real.anchor):
        raise UsageError(f"--out {out}: the root folder cannot be an export folder")
    return real


class ArtifactDir:
    """Collects the artifacts in a temporary folder beside ``out`` and puts them in place at the end.

    ``out`` may be replaced only when it is absent, empty or an earlier export of ours (a manifest of
    ours and nothing but our artifact names, :data:`ARTIFACT_NAMES`); any other folder is refused at
    construction, before any work (:class:`~xoresnet.errors.UsageError`, exit 2), unless ``force``:
    then the artifacts are added to the folder, never deleting or overwriting a file we did not write.

    Nothing is written into ``out`` before :meth:`commit`, which is one step: an exchange rename of the
    new folder with the old one (Linux ``renameat2``; elsewhere two renames, recovered by the next
    export into the same parent: :meth:`recover_leftovers`). Of the old folder only our files are
    deleted. A failed parity check leaves its details beside ``out``, in :attr:`failure_file`
    (``<out>.parity-failure.json``), which a later successful export removes.
    """

    def __init__(self, out: Path, *, force: bool = False):
        self.out = resolve_out(Path(out))
        self.force = force
        self.merge_into_foreign = False
        self.recover_leftovers()
        if self.out.exists():
            self._check_replaceable()
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-{os.getpid()}-", dir=self.out.parent))
        except OSError as e:
            raise UsageError(f"--out {out}: cannot create the artifact folder ({type(e).__name__}: "
                             f"{e.strerror or e})") from None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes it private; the final folder follows the umask
        (self.tmp / PARTIAL_MARKER).touch()
        self.files: dict[str, Path] = {}

    def _check_replaceable(self) -> None:
        out = self.out
        if not os.access(out, os.W_OK | os.X_OK) or not os.access(out.parent, os.W_OK | os.X_OK):
            raise UsageError(f"--out {out}: the folder or its parent is not writable")
        try:
            foreign = foreign_entries(out)
        except OSError as e:
            raise UsageError(f"--out {out}: cannot be read ({e.strerror or e})") from None
        names = set(os.listdir(out))
        if not names or (not foreign and _read_manifest(out) is not None):
            return  # empty, or an earlier export of ours: replaced whole at commit
        if not self.force:
            shown = ", ".join(repr(n) for n in (foreign or sorted(names))[:3])
            why = (f"holds files that are not an xoresnet export ({shown}{', ...' if len(foreign) > 3 else ''})"
                   if foreign else "holds our file names but no manifest of ours")
            raise UsageError(f"--out {out}: {why}; choose another folder, or pass --force to add the export's "
                             "files to it (nothing there is deleted)")
        clashes = sorted(names & ARTIFACT_NAMES - set(self._our_files_in(out)))
        if clashes:
            raise UsageError(f"--out {out}: --force never overwrites a file it did not write, and "
                             f"{', '.join(clashes)} there is not covered by a manifest of ours")
        self.merge_into_foreign = True

    @staticmethod
    def _our_files_in(folder: Path) -> list[str]:
        """The files in ``folder`` that its manifest of ours covers with their recorded SHA-256 (and the
        manifest itself): the ones an export may overwrite there."""
        manifest = _read_manifest(folder)
        if manifest is None:
            return []
        ours = [MANIFEST_FILE]
        for name, digest in (manifest.get("artifacts") or {}).items():
            f = folder / str(name)
            if name in ARTIFACT_NAMES and f.is_file() and not f.is_symlink() and file_sha256(f) == digest:
                ours.append(name)
        return ours

    def recover_leftovers(self) -> None:
        """Finish what an interrupted export into the same parent left: temporary folders of dead processes
        (``.NAME.partial-PID-*``: our files deleted) and, from the two-rename commit, an old folder
        (``.NAME.old-PID``) put back when ``NAME`` is missing, else cleared of our files."""
        parent = self.out.parent
        if not parent.is_dir():
            return
        for entry in os.scandir(parent):
            for kind in ("partial", "old"):
                prefix = f".{self.out.name}.{kind}-"
                if not entry.name.startswith(prefix) or not entry.is_dir(follow_symlinks=False):
                    continue
                pid = entry.name[len(prefix):].split("-")[0]
                if not pid.isdigit() or _pid_alive(int(pid)):
                    continue
                try:
                    if kind == "partial":
                        if (Path(entry.path) / PARTIAL_MARKER).is_file():  # a folder we created
                            shutil.rmtree(entry.path)
                    elif not self.out.exists():
                        os.rename(entry.path, self.out)
                    else:
                        _remove_our_files(Path(entry.path))
                except OSError:
                    pass  # left for the user to look at; never fatal

    @property
    def failure_file(self) -> Path:
        return self.out.with_name(f"{self.out.name}.parity-failure.json")

    def path(self, name: str) -> Path:
        if name not in ARTIFACT_NAMES:
            raise ValueError(f"{name!r} is not an artifact name of ours")
        self.files[name] = self.tmp / name
        return self.files[name]

    def write_json(self, name: str, data: Any) -> Path:
        p = self.path(name)
        p.write_text(json_text(data))
        return p

    def write_failure(self, data: dict[str, Any]) -> Path:
        """Write ``data`` (marked with ``format``) to :attr:`failure_file`, atomically. A file of that name
        that is not one of ours is never overwritten (:class:`~xoresnet.errors.UsageError`)."""
        if self.failure_file.exists() and not _is_failure_file(self.failure_file):
            raise UsageError(f"{self.failure_file} exists and was not written by xoresnet: not overwritten")
        tmp = self.tmp.with_name(f".{self.failure_file.name}.tmp-{os.getpid()}")
        tmp.write_text(json_text({"format": FAILURE_FORMAT, **data}))
        os.replace(tmp, self.failure_file)
        return self.failure_file

    def hashes(self) -> dict[str, str]:
        return {name: file_sha256(p) for name, p in sorted(self.files.items())}

    def commit(self) -> None:
        """Put the artifacts in place as ``out`` (see the class docstring), then remove a stale failure file."""
        if self.merge_into_foreign:
            for name in sorted(self.files, key=lambda n: n == MANIFEST_FILE):  # the manifest last
                os.replace(self.files[name], self.out / name)
            shutil.rmtree(self.tmp)
        elif self.out.exists():
            if _renameat2(self.tmp, self.out, _RENAME_EXCHANGE):
                old = self.tmp
            else:  # two renames; an interruption between them is recovered by the next export
                old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
                os.rename(self.out, old)
                os.rename(self.tmp, self.out)
            left = _remove_our_files(old)
            if left:
                print(f"warning: {old} keeps {len(left)} file(s) that appeared in {self.out} during the export "
                      f"(not ours, not deleted): {', '.join(left[:3])}", file=sys.stderr)
        elif not _renameat2(self.tmp, self.out, _RENAME_NOREPLACE):
            os.rename(self.tmp, self.out)
        if _is_failure_file(self.failure_file):
            self.failure_file.unlink(missing_ok=True)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)  # created by this process: everything in it is ours


def _is_failure_file(path: Path) -> bool:
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_MANIFEST_BYTES:
            return False
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FAILURE_FORMAT
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, RecursionError):
        return False


def json_text(data: Any) -> str:
    """``data`` as the export's JSON files write it: indented, sorted keys, numpy scalars, arrays and
    paths as plain JSON values."""
    return json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n"


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON-able: {type(x).__name__}")


def read_parity_certificate(export_dir: Path) -> dict[str, Any]:
    """The parity certificate of the export in ``export_dir``: its ``manifest.json``, checked.

    Raises :class:`~xoresnet.errors.ParityError` (exit code 5: dispatch blocked), one line, unless
    the manifest is an ``xoresnet-export`` manifest whose verdict is ``parity: passed`` with
    ``dispatch_allowed``, it lists ``integer_graph.h5`` and ``parity.json`` among its artifacts,
    every listed artifact exists with the SHA-256 recorded, and ``parity.json`` says ``passed``.
    Returns the manifest (a dict).
    """
    def blocked(why: str) -> ParityError:
        return ParityError(f"Loihi 2 dispatch is blocked: {why}")

    path = export_dir / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise blocked(f"{path} does not exist (no parity certificate: export the model first)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise blocked(f"{path} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise blocked(f"{path} is not an {MANIFEST_FORMAT} manifest")
    verdict = manifest.get("verdict") or {}
    if verdict.get("parity") != "passed" or verdict.get("dispatch_allowed") is not True:
        raise blocked(f"the manifest's verdict is not a passed parity check ({path})")
    artifacts = manifest.get("artifacts") or {}
    for name in (GRAPH_FILE, PARITY_FILE):
        if name not in artifacts:
            raise blocked(f"the manifest does not cover {name} ({path})")
    for name, digest in sorted(artifacts.items()):
        f = export_dir / name
        if not f.is_file():
            raise blocked(f"{f} is missing (the parity certificate covers it)")
        if file_sha256(f) != digest:
            raise blocked(f"{f} is not the file the parity certificate covers (its SHA-256 differs from "
                          f"{path}): re-export the model")
    parity = json.loads((export_dir / PARITY_FILE).read_text(encoding="utf-8"))
    if parity.get("passed") is not True:
        raise blocked(f"the parity check failed ({parity.get('summary', 'no summary')})")
    return manifest
