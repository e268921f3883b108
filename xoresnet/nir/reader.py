"""Reading a NIR file from anyone: bounded, with h5py only, every problem one line.

``nir.read`` trusts its file: it reads every dataset whole (a small gzip dataset can declare
terabytes), recurses without limit, and runs nir's type inference, which fails on graphs that
producers really write (snnTorch's and nirtorch's graphs with a batch dimension in the Input
type, Norse's scalar parameters). :func:`read_nir_file` reads the same HDF5 layout (``nir.write``:
a ``node`` group holding ``type = "NIRGraph"``, ``nodes/<name>/...``, ``edges`` ``[E, 2]`` and
``metadata``) into a :class:`RawGraph` of plain numpy arrays, strings and numbers, checking first:

* the file is a regular file of at most :data:`MAX_NIR_BYTES` (:func:`xoresnet.files.open_regular`),
  opened once (h5py reads the same file object: no check-then-open race);
* every dataset is numeric, boolean or a string, at most :data:`MAX_DATASET_BYTES` as declared
  (before it is read; compressed data cannot expand beyond it), all of them together at most
  :data:`MAX_TOTAL_BYTES`; strings at most :data:`MAX_STRING_BYTES`;
* at most :data:`MAX_NODES` nodes and :data:`MAX_EDGES` edges per graph, subgraphs (a nested
  ``NIRGraph``, e.g. snnTorch's recurrent ``RLeaky``) at most :data:`MAX_DEPTH` deep.

Anything else raises :class:`~xoresnet.errors.DataError` (exit 3) naming the file and what is
wrong. What the nodes mean is :mod:`xoresnet.nir.frontend`'s business. :func:`is_hdf5_file` tells a
NIR file from a checkpoint (a zip archive) by content, not by extension.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from xoresnet.errors import DataError
from xoresnet.files import GiB, MiB, open_regular

#: The largest NIR file read.
MAX_NIR_BYTES = 4 * GiB
#: The largest dataset (declared bytes), and all datasets of a file together.
MAX_DATASET_BYTES = 2 * GiB
MAX_TOTAL_BYTES = 8 * GiB
#: The longest string dataset (metadata JSON, node types, names).
MAX_STRING_BYTES = 4 * MiB
MAX_NODES = 100_000
MAX_EDGES = 1_000_000
MAX_DEPTH = 8
#: HDF5's format signature; the superblock sits at offset 0 or at 512 * 2^k (after a user block).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_SIGNATURE_OFFSETS = (0, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


@dataclass
class RawNode:
    """One node as stored: ``type`` (nir's class name), ``fields`` (every other dataset: numpy arrays,
    strings, numbers; nested groups as dicts), ``metadata`` (strings decoded), ``graph`` for a nested
    ``NIRGraph``."""

    name: str
    type: str
    fields: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    graph: Optional["RawGraph"] = None


@dataclass
class RawGraph:
    """A graph as stored: nodes in file order, edges in file order, graph metadata."""

    nodes: dict[str, RawNode]
    edges: list[tuple[str, str]]
    metadata: dict[str, Any] = field(default_factory=dict)
    version: Optional[str] = None


def is_hdf5_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like an HDF5 file (a NIR graph) rather than a zip archive (a checkpoint):
    the HDF5 signature at offset 0 or 512 * 2^k. Unreadable paths answer False (the caller's reader
    then reports them)."""
    try:
        with open_regular(path, what=str(path), limit=MAX_NIR_BYTES) as f:
            for offset in _SIGNATURE_OFFSETS:
                f.seek(offset)
                head = f.read(len(HDF5_SIGNATURE))
                if head == HDF5_SIGNATURE:
                    return True
                if len(head) < len(HDF5_SIGNATURE):
                    return False
    except DataError:
        return False
    return False


class _Reader:
    def __init__(self, what: str):
        self.what = what
        self.total = 0

    def fail(self, where: str, why: str) -> DataError:
        return DataError(f"{self.what}: {where}: {why}")

    def value(self, ds, where: str) -> Any:
        """A dataset's value after its declared size and type are checked."""
        import h5py

        dt = ds.dtype
        string = h5py.check_string_dtype(dt) is not None or dt.kind in "SU"
        if not string and dt.kind not in "biuf":
            raise self.fail(where, f"dataset of type {dt} (numbers, booleans and strings are read)")
        if string and ds.shape is not None and len(ds.shape) > 2:
            raise self.fail(where, f"string dataset of shape {ds.shape}")
        count = int(np.prod(ds.shape)) if ds.shape else 1
        declared = count * (dt.itemsize if not h5py.check_string_dtype(dt) else 16)
        if declared > MAX_DATASET_BYTES:
            raise self.fail(where, f"declares {declared} bytes, more than the {MAX_DATASET_BYTES} a dataset may have")
        self.total += declared
        if self.total > MAX_TOTAL_BYTES:
            raise self.fail(where, f"the datasets declare more than {MAX_TOTAL_BYTES} bytes together")
        if string:
            if count > MAX_EDGES * 2:
                raise self.fail(where, f"{count} strings")
            raw = ds[()]
            return self._decode(raw, where)
        return np.asarray(ds[()])

    def _decode(self, raw: Any, where: str) -> Any:
        if isinstance(raw, np.ndarray):
            return np.array([self._decode(x, where) for x in raw.reshape(-1)], dtype=object).reshape(raw.shape)
        if isinstance(raw, bytes):
            if len(raw) > MAX_STRING_BYTES:
                raise self.fail(where, f"a string of {len(raw)} bytes")
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise self.fail(where, "a string that is not UTF-8") from None
        if isinstance(raw, str):
            if len(raw) > MAX_STRING_BYTES:
                raise self.fail(where, f"a string of {len(raw)} characters")
            return raw
        return raw

    def group(self, g, where: str, depth: int) -> dict[str, Any]:
        import h5py

        if depth > MAX_DEPTH + 2:
            raise self.fail(where, f"groups nested deeper than {MAX_DEPTH + 2}")
        if len(g) > MAX_NODES:
            raise self.fail(where, f"{len(g)} entries (at most {MAX_NODES})")
        out: dict[str, Any] = {}
        for key in g:
            item = g.get(key, getlink=True)
            if not isinstance(item, h5py.HardLink):
                raise self.fail(f"{where}/{key}", "a soft or external link (only the file's own data is read)")
            obj = g[key]
            if isinstance(obj, h5py.Group):
                out[key] = self.group(obj, f"{where}/{key}", depth + 1)
            elif isinstance(obj, h5py.Dataset):
                out[key] = self.value(obj, f"{where}/{key}")
            else:
                raise self.fail(f"{where}/{key}", f"an HDF5 object of kind {type(obj).__name__}")
        return out

    def graph(self, d: dict[str, Any], where: str, depth: int) -> RawGraph:
        if depth > MAX_DEPTH:
            raise self.fail(where, f"subgraphs nested deeper than {MAX_DEPTH}")
        if _text(d.get("type")) != "NIRGraph":
            raise self.fail(where, f"type is {d.get('type')!r}, not 'NIRGraph'")
        nodes_d = d.get("nodes")
        if not isinstance(nodes_d, dict) or not nodes_d:
            raise self.fail(where, "has no nodes")
        nodes: dict[str, RawNode] = {}
        for name, nd in nodes_d.items():
            if not isinstance(nd, dict):
                raise self.fail(f"{where}/nodes/{name}", "is not a group")
            kind = _text(nd.get("type"))
            if not kind:
                raise self.fail(f"{where}/nodes/{name}", "has no 'type'")
            meta = nd.get("metadata") if isinstance(nd.get("metadata"), dict) else {}
            fields = {k: v for k, v in nd.items() if k not in ("type", "metadata")}
            sub = self.graph(nd, f"{where}/nodes/{name}", depth + 1) if kind == "NIRGraph" else None
            nodes[str(name)] = RawNode(str(name), kind, fields, _plain(meta), sub)
        edges_raw = d.get("edges")
        edges: list[tuple[str, str]] = []
        if edges_raw is not None:
            arr = np.asarray(edges_raw, dtype=object)
            if arr.size == 0:
                arr = arr.reshape(0, 2)
            if arr.ndim != 2 or arr.shape[1] != 2:
                raise self.fail(f"{where}/edges", f"shape {arr.shape}, not [E, 2]")
            if arr.shape[0] > MAX_EDGES:
                raise self.fail(f"{where}/edges", f"{arr.shape[0]} edges (at most {MAX_EDGES})")
            edges = [(_text(a), _text(b)) for a, b in arr]
        meta = d.get("metadata") if isinstance(d.get("metadata"), dict) else {}
        return RawGraph(nodes, edges, _plain(meta))


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.shape == ():
        return _text(v.item())
    return v if isinstance(v, str) else ("" if v is None else str(v))


def _plain(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata values as plain Python: 0-d arrays as numbers or strings, bytes decoded."""
    out = {}
    for k, v in meta.items():
        if isinstance(v, dict):
            out[k] = _plain(v)
        elif isinstance(v, np.ndarray) and v.shape == ():
            out[k] = v.item()
        elif isinstance(v, bytes):
            out[k] = v.decode("utf-8", "replace")
        else:
            out[k] = v
    return out


def read_nir_file(path: str | os.PathLike) -> RawGraph:
    """The NIR graph in ``path`` as a :class:`RawGraph` (module docstring: what is checked). Raises
    :class:`~xoresnet.errors.DataError` (exit 3), one line."""
    import h5py

    what = f"NIR file {path}"
    reader = _Reader(what)
    with open_regular(path, what=what, limit=MAX_NIR_BYTES) as f:
        try:
            h5 = h5py.File(f, "r")
        except (OSError, ValueError) as e:
            raise DataError(f"{what}: not a readable HDF5 file ({str(e).strip()[:120]})") from None
        try:
            with h5:
                if "node" not in h5:
                    raise DataError(f"{what}: has no 'node' group: not a NIR graph written by nir.write")
                version = _text(reader.value(h5["version"], "version")) if "version" in h5 else None
                if not isinstance(h5["node"], h5py.Group):
                    raise DataError(f"{what}: 'node' is not a group")
                tree = reader.group(h5["node"], "node", 0)
        except DataError:
            raise
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:  # corrupt or truncated HDF5
            raise DataError(f"{what}: cannot be read ({type(e).__name__}: {str(e).strip()[:120]})") from None
    graph = reader.graph(tree, "node", 0)
    graph.version = version
    return graph


def metadata_json(meta: dict[str, Any], key: str) -> dict[str, Any]:
    """The JSON object under ``meta[key]`` (our ``xoresnet`` annotations), ``{}`` when absent or not JSON."""
    raw = meta.get(key)
    if not isinstance(raw, str):
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
