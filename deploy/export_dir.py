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

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

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


class ArtifactDir:
    """Collects the artifacts in a temporary folder beside ``out`` and swaps it in at the end.

    Nothing is ever written into ``out`` before :meth:`commit`; a failed parity check leaves its
    details beside it, in :attr:`failure_file` (``<out>.parity-failure.json``), which a later
    successful export removes."""

    def __init__(self, out: Path):
        self.out = out
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        except OSError as e:
            raise UsageError(f"--out {out}: cannot create the artifact folder ({type(e).__name__}: "
                             f"{e.strerror or e})") from None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes it private; the final folder follows the umask
        self.files: dict[str, Path] = {}

    @property
    def failure_file(self) -> Path:
        return self.out.with_name(f"{self.out.name}.parity-failure.json")

    def path(self, name: str) -> Path:
        self.files[name] = self.tmp / name
        return self.files[name]

    def write_json(self, name: str, data: Any) -> Path:
        p = self.path(name)
        p.write_text(json_text(data))
        return p

    def write_failure(self, data: Any) -> Path:
        """Write ``data`` to :attr:`failure_file` (atomically: temporary name, then rename)."""
        tmp = self.tmp.with_name(f".{self.failure_file.name}.tmp-{os.getpid()}")
        tmp.write_text(json_text(data))
        os.replace(tmp, self.failure_file)
        return self.failure_file

    def hashes(self) -> dict[str, str]:
        return {name: file_sha256(p) for name, p in sorted(self.files.items())}

    def commit(self) -> None:
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.failure_file.unlink(missing_ok=True)

    def discard(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


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
