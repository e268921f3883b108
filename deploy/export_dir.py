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
import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np

from xoresnet.files import atomic_write, file_sha256
from xoresnet.errors import ParityError, UsageError
from xoresnet.files import read_bounded

NIR_FILE = "model.nir"
GRAPH_FILE = "integer_graph.h5"
CALIBRATION_FILE = "calibration.json"
LAVA_GRAPH_FILE = "lava_graph.json"
PARITY_FILE = "parity.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "xoresnet-export"
MANIFEST_VERSION = 3
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
#: Marks a temporary artifact folder as ours, so that a later export may remove it when its process died
#: (removed before the folder is put in place; a folder an older version committed with it is still ours).
PARTIAL_MARKER = ".xoresnet-partial"
_OUR_NAMES = ARTIFACT_NAMES | {PARTIAL_MARKER}

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


def holds_manifest(folder: Path) -> bool:
    """Whether ``folder`` is a folder with a ``manifest.json`` entry (an earlier export, whatever its state:
    ``--dispatch`` verifies such a folder instead of exporting into it)."""
    return folder.is_dir() and os.path.lexists(folder / MANIFEST_FILE)


def foreign_entries(folder: Path) -> list[str]:
    """The entries of ``folder`` an export of ours did not write: every name that is not one of
    :data:`ARTIFACT_NAMES` or is not a regular file (symlinks and folders included), sorted."""
    out = []
    for entry in os.scandir(folder):
        if entry.name not in _OUR_NAMES or not entry.is_file(follow_symlinks=False):
            out.append(entry.name)
    return sorted(out)


def _remove_our_files(folder: Path) -> list[str]:
    """Delete the files of ours in ``folder`` (regular files named in :data:`ARTIFACT_NAMES`), then the folder
    if it is empty. Returns the entries left (never deleted: we did not write them)."""
    for entry in os.scandir(folder):
        if entry.name in _OUR_NAMES and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
    left = sorted(os.listdir(folder))
    if not left:
        os.rmdir(folder)
    return left


_FS_IOC_GETFLAGS = 0x80086601  # Linux: the inode flags of chattr(1)
_FS_IMMUTABLE_FL, _FS_APPEND_FL = 0x10, 0x20


def _locked(path: Path) -> Optional[str]:
    """``"immutable"`` or ``"append-only"`` when ``path`` carries that inode flag (``chattr +i`` / ``+a``: it
    cannot be renamed, nor can files in it be replaced), else None (also where flags cannot be read)."""
    try:
        import array
        import fcntl

        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (ImportError, OSError):
        return None
    try:
        flags = array.array("l", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags, True)
    except OSError:
        return None
    finally:
        os.close(fd)
    return "immutable" if flags[0] & _FS_IMMUTABLE_FL else "append-only" if flags[0] & _FS_APPEND_FL else None


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
    Refused the same way, before any work, is what would only fail at the commit: an immutable or
    append-only ``out`` or parent (``chattr``), and, without ``force``, the current folder, a folder above
    it or a mount point (``force`` adds the files to those instead of replacing them).

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
        for folder in (self.out.parent, self.out):
            lock = _locked(folder) if folder.exists() else None
            if lock:
                raise UsageError(f"--out {out}: {folder} is {lock} (chattr +{lock[0]}): the export could not be put "
                                 "in place")
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
        cwd = Path(os.path.realpath(os.getcwd()))
        pinned = ("the current folder" if out == cwd else "above the current folder" if out in cwd.parents else
                  "a mount point" if os.path.ismount(out) else None)
        if pinned and not self.force:  # replacing it would rename it away from under the shell (or fail: EBUSY)
            raise UsageError(f"--out {out}: is {pinned}, which an export cannot replace; name a folder below it, or "
                             "pass --force to add the export's files to it")
        if not pinned and (not names or (not foreign and _read_manifest(out) is not None)):
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
        return atomic_write(self.failure_file, json_text({"format": FAILURE_FORMAT, **data}))

    def hashes(self) -> dict[str, str]:
        return {name: file_sha256(p) for name, p in sorted(self.files.items())}

    def commit(self) -> None:
        """Put the artifacts in place as ``out`` (see the class docstring), then remove a stale failure file.

        Another export may commit into ``out`` at the same instant: the exchange (or the no-replace rename when
        ``out`` is absent) is retried when it finds ``out`` gone (``ENOENT``) or just created (``EEXIST``), so
        both commits succeed, the later one's folder stays, and the earlier one's files are deleted from the
        folder it got back; nothing is orphaned. (The two-rename fallback of platforms without ``renameat2`` is
        not safe against such a race; what it leaves is recovered by the next export, see
        :meth:`recover_leftovers`.)"""
        if self.merge_into_foreign:
            for name in sorted(self.files, key=lambda n: n == MANIFEST_FILE):  # the manifest last
                os.replace(self.files[name], self.out / name)
            shutil.rmtree(self.tmp)
        else:
            (self.tmp / PARTIAL_MARKER).unlink(missing_ok=True)
            old = self._swap_in()
            if old is not None:
                left = _remove_our_files(old)
                if left:
                    print(f"warning: {old} keeps {len(left)} file(s) that appeared in {self.out} during the export "
                          f"(not ours, not deleted): {', '.join(left[:3])}", file=sys.stderr)
        if _is_failure_file(self.failure_file):
            self.failure_file.unlink(missing_ok=True)

    def _swap_in(self, attempts: int = 16) -> Optional[Path]:
        """Rename :attr:`tmp` to :attr:`out` in one step; returns the folder that held the old ``out`` (None if
        there was none)."""
        for _ in range(attempts):
            try:
                if os.path.lexists(self.out):
                    if _renameat2(self.tmp, self.out, _RENAME_EXCHANGE):
                        return self.tmp
                    old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")  # two renames: see commit()
                    os.rename(self.out, old)
                    os.rename(self.tmp, self.out)
                    return old
                if not _renameat2(self.tmp, self.out, _RENAME_NOREPLACE):
                    os.rename(self.tmp, self.out)
                return None
            except (FileNotFoundError, FileExistsError):
                continue  # another export committed or moved out meanwhile: look again
            except OSError as e:
                if e.errno != errno.ENOTEMPTY:
                    raise
        raise OSError(errno.EBUSY, f"{self.out} kept changing while the export was put in place")

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


# ---------------------------------------------------------------------- the parity certificate

#: What the parity certificate covers: every artifact of a Lava-target export, in pipeline order (the order
#: in which dispatch checks them, so the first that fails is the one named).
CERTIFIED_ARTIFACTS = (NIR_FILE, GRAPH_FILE, CALIBRATION_FILE, LAVA_GRAPH_FILE, PARITY_FILE, REPORT_JSON_FILE,
                       REPORT_HTML_FILE)
#: The largest parity.json read back (it grows with the number of populations; ours are a few kB).
MAX_PARITY_BYTES = 64 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Certificate(NamedTuple):
    """A parity certificate that held (:func:`read_parity_certificate`): ``manifest`` (``manifest.json``),
    ``parity`` (``parity.json``) and ``graph`` (``integer_graph.h5``, the graph dispatch runs)."""

    manifest: dict[str, Any]
    parity: dict[str, Any]
    graph: Any


def _blocked(why: str) -> ParityError:
    return ParityError(f"Loihi 2 dispatch is blocked: {why}")


def _read_json(path: Path, limit: int) -> Any:
    """``path``'s JSON (a regular file of at most ``limit`` bytes), or :func:`_blocked` naming what is wrong."""
    if not os.path.lexists(path):
        raise _blocked(f"{path} is missing (the parity certificate covers it)")
    try:
        return json.loads(read_bounded(path, what=str(path), limit=limit, error=ParityError).decode("utf-8"))
    except ParityError as e:
        raise _blocked(str(e)) from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        where = f" (line {e.lineno}, column {e.colno}: {e.msg})" if isinstance(e, json.JSONDecodeError) else ""
        raise _blocked(f"{path} is not valid JSON{where}") from None


def pixels_sha256(pixels) -> str:
    """SHA-256 of integer images ``[N, C, H, W]`` (shape and values as little-endian int64): what the
    manifest records for the parity and calibration images."""
    array = np.ascontiguousarray(np.asarray(pixels), dtype="<i8")
    return hashlib.sha256(repr(array.shape).encode() + array.tobytes()).hexdigest()


def stream_sha256(result) -> str:
    """SHA-256 of a Loihi-timed run (:class:`calibration.reference.StreamResult` of one stream): every population's
    spikes at every step, by name (a partial sum's payloads as little-endian int64), then the readout.
    parity.json records it for the integer reference."""
    h = hashlib.sha256()
    for name in sorted(result.spikes):
        spikes = np.asarray(result.spikes[name].cpu() if hasattr(result.spikes[name], "cpu") else result.spikes[name])
        h.update(f"{name}:{spikes.shape}".encode())
        if spikes.dtype == bool:
            h.update(np.packbits(spikes.reshape(-1)).tobytes())
        else:
            h.update(np.ascontiguousarray(spikes, dtype="<i8").tobytes())
    readout = result.readout.cpu() if hasattr(result.readout, "cpu") else result.readout
    h.update(np.ascontiguousarray(np.asarray(readout), dtype="<i8").tobytes())
    return h.hexdigest()


def reference_stream(graph, pixels):
    """The integer reference's Loihi-timed run of ``pixels`` ``[N, C, H, W]`` as one stream."""
    import torch

    from calibration.reference import ReferenceSimulator

    return ReferenceSimulator(graph).run_stream(torch.as_tensor(np.asarray(pixels), dtype=torch.int64).unsqueeze(0))


def _need(cond: bool, why: str) -> None:
    if not cond:
        raise _blocked(why)


def _is_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_artifact_list(artifacts: Any, path: Path) -> None:
    """The manifest names exactly :data:`CERTIFIED_ARTIFACTS`, each with a SHA-256: no file outside the
    folder, no file of another kind, none left out."""
    _need(isinstance(artifacts, dict), f"{path}: 'artifacts' must map file names to SHA-256 digests")
    for name, digest in artifacts.items():
        if name not in CERTIFIED_ARTIFACTS:
            outside = not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", "..")
            raise _blocked(f"{path} names {name!r}, " + ("a path outside the export folder" if outside else
                                                         "which is not an artifact of an export")
                           + ": the certificate covers exactly the export's own files")
        _need(isinstance(digest, str) and _SHA256.fullmatch(digest) is not None,
              f"{path}: the digest of {name} is not a SHA-256")
    for name in CERTIFIED_ARTIFACTS:
        _need(name in artifacts, f"the manifest does not cover {name} ({path}); every artifact of the export must be "
                                 "covered")


def _check_parity_json(parity: Any, verdict: dict, path: Path) -> None:
    """parity.json is a passed verdict whose fields have their kinds and agree with the manifest's verdict."""
    _need(isinstance(parity, dict), f"{path} must be a JSON object")
    if parity.get("passed") is not True:
        raise _blocked(f"the parity check failed ({str(parity.get('summary', 'no summary'))[:200]}) ({path})")
    for key in ("samples", "steps", "populations", "neuron_steps_compared"):
        _need(_is_int(parity.get(key), 1), f"{path}: '{key}' must be an integer >= 1")
    predictions = parity.get("predictions")
    _need(isinstance(predictions, dict) and all(
        isinstance(predictions.get(k), list) and len(predictions[k]) == parity["samples"]
        and all(_is_int(p) for p in predictions[k]) for k in ("lava", "reference")),
        f"{path}: 'predictions' must hold 'lava' and 'reference', {parity['samples']} class numbers each")
    _need(predictions["lava"] == predictions["reference"], f"{path}: Lava's and the reference's predictions differ")
    _need(isinstance(parity.get("reference_sha256"), str) and _SHA256.fullmatch(parity["reference_sha256"]) is not None,
          f"{path}: 'reference_sha256' must be the SHA-256 of the reference's spikes")
    for key, mine in (("parity_samples", "samples"), ("neuron_steps_compared", "neuron_steps_compared")):
        _need(verdict.get(key) == parity[mine],
              f"the manifest's verdict ({key} {verdict.get(key)!r}) and {path} ({mine} {parity[mine]!r}) disagree")


def _check_graph(graph, parity: dict, path: Path) -> None:
    """The graph is the one parity.json describes: scheduled, as many populations, the same stream length
    and neuron-step count for its samples."""
    _need(graph.scheduled, f"{path} is not scheduled (no reset interval)")
    neurons = sum(p.size for p in graph.populations.values())
    steps = graph.stream_steps(parity["samples"])
    for what, graph_says, parity_says in (("populations", len(graph.populations), parity["populations"]),
                                          ("stream steps", steps, parity["steps"]),
                                          ("neuron-steps", neurons * steps, parity["neuron_steps_compared"])):
        _need(graph_says == parity_says, f"{path} is not the graph parity.json certifies ({what}: {graph_says} in the "
                                         f"graph, {parity_says} in parity.json)")


def read_parity_certificate(export_dir: Path, pixels=None) -> Certificate:
    """The parity certificate of the export in ``export_dir``, checked; raises
    :class:`~xoresnet.errors.ParityError` (exit code 5: dispatch blocked), one line naming the first thing
    that fails, unless all of this holds:

    1. ``manifest.json`` is a regular file, JSON, an ``xoresnet-export`` manifest of this version whose verdict
       is ``parity: passed`` with ``dispatch_allowed``;
    2. it names exactly the export's artifacts (:data:`CERTIFIED_ARTIFACTS`: every one, nothing else, no path
       outside the folder), each with a SHA-256;
    3. each artifact, in pipeline order, is a regular file in the folder (not a symlink) with that SHA-256;
    4. ``parity.json`` is a passed verdict with fields of their kinds, agreeing with the manifest's verdict;
    5. ``integer_graph.h5`` reads as a scheduled graph with the populations, stream length and neuron-steps
       that ``parity.json`` counts;
    6. with ``pixels`` (the images to dispatch, ``[N, C, H, W]``): they are the parity images (their SHA-256 is
       the manifest's), and the integer reference run on the folder's graph gives, spike for spike, the run
       ``parity.json`` records (``reference_sha256``) and its predictions.

    What this proves: the folder is complete and is, file for file, the export whose parity passed; it catches
    accidental mismatches (a stale, partial, edited or mixed-up folder). It is integrity, not authenticity:
    anyone who can write the folder can recompute every hash and record. ``--reverify``
    (:func:`reverify_export`) re-derives the graph from the checkpoint and re-runs the Lava parity.
    """
    export_dir = Path(export_dir)
    path = export_dir / MANIFEST_FILE
    if not os.path.lexists(path):
        raise _blocked(f"{path} does not exist (no parity certificate: export the model first)")
    manifest = _read_json(path, MAX_MANIFEST_BYTES)
    _need(isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT,
          f"{path} is not an {MANIFEST_FORMAT} manifest")
    _need(manifest.get("version") == MANIFEST_VERSION,
          f"{path} has manifest version {manifest.get('version')!r}, dispatch reads version {MANIFEST_VERSION}: "
          "re-export the model")
    verdict = manifest.get("verdict")
    _need(isinstance(verdict, dict) and verdict.get("parity") == "passed" and verdict.get("dispatch_allowed") is True,
          f"the manifest's verdict is not a passed parity check ({path})")
    artifacts = manifest.get("artifacts")
    _check_artifact_list(artifacts, path)
    for name in CERTIFIED_ARTIFACTS:
        f = export_dir / name
        try:
            st = f.lstat()
        except FileNotFoundError:
            raise _blocked(f"{f} is missing (the parity certificate covers it)") from None
        except OSError as e:
            raise _blocked(f"{f} cannot be read ({e.strerror or e})") from None
        _need(stat.S_ISREG(st.st_mode), f"{f} is not a regular file (the certificate covers the folder's own files, "
                                        "not links or devices)")
        try:
            digest = file_sha256(f)
        except OSError as e:
            raise _blocked(f"{f} cannot be read ({e.strerror or e})") from None
        _need(digest == artifacts[name], f"{f} is not the file the parity certificate covers (its SHA-256 differs "
                                         f"from {path}): re-export the model")
    parity = _read_json(export_dir / PARITY_FILE, MAX_PARITY_BYTES)
    _check_parity_json(parity, verdict, export_dir / PARITY_FILE)
    try:
        from calibration.integer_graph import load_integer_graph

        graph = load_integer_graph(export_dir / GRAPH_FILE)
    except Exception as e:  # noqa: BLE001 - a crafted HDF5 file can fail in many ways; all of them block dispatch
        raise _blocked(f"{export_dir / GRAPH_FILE} cannot be read as an integer graph ({type(e).__name__}: "
                       f"{str(e).strip()[:120]})") from None
    _check_graph(graph, parity, export_dir / GRAPH_FILE)
    if pixels is not None:
        data = manifest.get("data") if isinstance(manifest.get("data"), dict) else {}
        _need(len(pixels) == parity["samples"], f"dispatch was given {len(pixels)} images, the certificate covers "
                                                f"{parity['samples']} parity images")
        _need(pixels_sha256(pixels) == data.get("parity_pixels_sha256"),
              f"the images to dispatch are not the parity images of {path} (their SHA-256 differs)")
        reference = reference_stream(graph, pixels)
        _need(stream_sha256(reference) == parity["reference_sha256"],
              f"{export_dir / GRAPH_FILE} does not give the integer reference run parity.json records on the parity "
              "images (spikes or readout differ): the graph is not the one whose parity passed")
        predictions = [int(x) for x in reference.predictions()[0].tolist()]
        _need(predictions == parity["predictions"]["reference"],
              f"the integer reference's predictions {predictions} on the folder's graph differ from parity.json's")
    return Certificate(manifest, parity, graph)


def graph_difference(a, b) -> Optional[str]:
    """The first difference between two integer graphs (every attribute, population and synapse, arrays by
    value), or None when they are equal."""
    def differs(x, y) -> bool:
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            return np.shape(x) != np.shape(y) or not np.array_equal(x, y)
        return x != y

    for name in ("input_shape", "input_levels", "timesteps", "reset_interval", "readout_scale", "readout_bias"):
        if differs(getattr(a, name), getattr(b, name)):
            return name
    if (a.core_plan and a.core_plan.to_dict()) != (b.core_plan and b.core_plan.to_dict()):
        return "the core plan"
    if list(a.populations) != list(b.populations):
        return "the populations (names or order)"
    for p, q in zip(a.populations.values(), b.populations.values()):
        for f in dataclasses.fields(p):
            if differs(getattr(p, f.name), getattr(q, f.name)):
                return f"population {p.name}: {f.name}"
    if [s.name for s in a.synapses] != [s.name for s in b.synapses]:
        return "the synapses (names or order)"
    for s, t in zip(a.synapses, b.synapses):
        for f in dataclasses.fields(s):
            if differs(getattr(s, f.name), getattr(t, f.name)):
                return f"synapse {s.name}: {f.name}"
    return None


def reverify_export(export_dir: Path, cert: Certificate, model, ckpt, calib_pixels, pixels, *, timeout: float,
                    progress: bool = False) -> None:
    """``--reverify``: what a hash manifest cannot prove, recomputed from outside the folder. Raises
    :class:`~xoresnet.errors.ParityError` (exit 5) unless

    1. ``ckpt`` is the checkpoint the certificate names (its SHA-256);
    2. ``calib_pixels`` are the calibration images the manifest records (their SHA-256);
    3. calibrating ``model`` on them and mapping it onto the target's cores (scheduling, fan-in splits, core
       plan: :func:`deploy.pipeline.map_to_cores`) gives exactly the folder's ``integer_graph.h5``
       (:func:`graph_difference`: every register, weight, delay and part);
    4. Lava (``Loihi2SimCfg('fixed_pt')``) run on that graph with ``pixels`` equals the integer reference bit
       for bit (:func:`deploy.pipeline.lava_parity`), and the reference's run is the one ``parity.json``
       records.

    ``timeout``: seconds for the Lava run (:class:`~xoresnet.errors.LavaRunError`, exit 6, beyond)."""
    import torch

    from deploy.pipeline import calibrate_checkpoint, lava_parity, map_to_cores

    manifest, parity, graph = cert
    where = Path(export_dir) / MANIFEST_FILE
    recorded = (manifest.get("checkpoint") or {}).get("sha256")
    _need(ckpt.sha256 == recorded, f"--reverify: {ckpt.path} (SHA-256 {ckpt.sha256[:12]}...) is not the checkpoint "
                                   f"{where} certifies (SHA-256 {str(recorded)[:12]}...)")
    data = manifest.get("data") if isinstance(manifest.get("data"), dict) else {}
    _need(pixels_sha256(calib_pixels) == data.get("calibration_pixels_sha256"),
          "--reverify: the calibration images are not those the export used (pass the same --calib-data, or none "
          "if it used the training split)")
    model.config = model.config.replace(timesteps=graph.timesteps)
    derived = map_to_cores(calibrate_checkpoint(model, ckpt, calib_pixels).graph, None).graph  # the plan and
    # splits depend on the per-core budgets only, not on the target or system
    difference = graph_difference(derived, graph)
    _need(difference is None, f"--reverify: {Path(export_dir) / GRAPH_FILE} is not the integer graph of {ckpt.path} "
                              f"(first difference: {difference})")
    run = lava_parity(graph, torch.as_tensor(np.asarray(pixels), dtype=torch.int64), timeout=timeout,
                      progress=progress)
    _need(run.passed, f"--reverify: {run.report.summary()}")
    _need(run.record["reference_sha256"] == parity["reference_sha256"],
          "--reverify: the integer reference's run differs from the one parity.json records")
