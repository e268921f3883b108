"""The robustness battery of issue 10: one row per bad input, interruption or tampered export.

Every row of :data:`CASES` names its class, builds its input in ``tmp_path`` (``prepare`` returns the
command line), runs one command and states the outcome: the exit code, a pattern the one error line
matches (the last line of stderr, ``PROG: error: ...``; no traceback), the paths that must still exist
afterwards with their content unchanged (``keep``), and, for every row, that no temporary folder of ours
is left (``.DIR.partial-*``, ``.DIR.old-*``, ``$TMPDIR/xoresnet-lava-PID-*``).

Most rows run the command in this process with its heavy stages replaced by a failure (the export's
stages 2-7, training, evaluation): a row that expects a refusal holds only if the refusal comes before
any work. Rows marked ``subprocess`` run the installed console script (FIFOs, signals, peak memory: a
row with ``max_rss_mb`` fails when the command's peak RSS goes beyond it). The certificate rows dispatch
copies of export folders made once (:func:`certified`) with lava-loihi mocked as installed; the
hardware run is answered with the export's own Lava result and must not be reached where a row expects
dispatch to be blocked. ``--out`` rows live in ``tests/test_out_folder.py``, next to the lead's table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import inspect
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import torch

from conftest import QAT_DIGITS_MODEL, REPO, small_config

QAT_MODEL = QAT_DIGITS_MODEL
FLOAT_MODEL = REPO / "models" / "xoresnet-digits.pt"
BIN = Path(sys.executable).parent


# ---------------------------------------------------------------------- inputs: checkpoints

def payload(model: Path = QAT_MODEL) -> dict:
    return torch.load(model, weights_only=True)


def save(tmp: Path, data: dict, name: str = "m.pt") -> Path:
    path = tmp / name
    torch.save(data, path)
    return path


def edited_config(tmp: Path, **changes) -> Path:
    data = payload()
    data["config"] = json.dumps({**json.loads(data["config"]), **changes})
    return save(tmp, data)


def raw_config(tmp: Path, text: str, entry: str = "config") -> Path:
    data = payload()
    data[entry] = text
    return save(tmp, data)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


ZERO_CHUNK = bytes(1 << 22)


class _DeflatedZeroChunks:
    """A raw-deflate compressor for a stream of :data:`ZERO_CHUNK` s: one chunk is compressed once and the same
    bytes stand for every chunk (a full flush after it resets the dictionary, so the blocks are independent)."""

    def __init__(self):
        co = zlib.compressobj(1, zlib.DEFLATED, -15)
        self.block = co.compress(ZERO_CHUNK) + co.flush(zlib.Z_FULL_FLUSH)

    def compress(self, data: bytes) -> bytes:
        assert data == ZERO_CHUNK
        return self.block

    def flush(self) -> bytes:
        return zlib.compressobj(1, zlib.DEFLATED, -15).flush()  # the final (empty) block


def zip_rewrite(src: Path, dst: Path, *, replace: Optional[dict[str, bytes]] = None,
                stream: Optional[tuple[str, int]] = None, extra: Optional[tuple[str, bytes]] = None) -> Path:
    """Copy the zip archive ``src`` to ``dst``: entries ending in a key of ``replace`` get that content;
    ``stream = (suffix, n)``: that entry becomes ``n`` zero bytes (a multiple of 4 MiB), deflated (a
    decompression bomb); ``extra = (name, data)``: one more entry."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            name = info.filename
            if stream and name.endswith(stream[0]):
                entry = zipfile.ZipInfo(name)
                entry.compress_type = zipfile.ZIP_DEFLATED
                with pytest.MonkeyPatch.context() as mp:
                    mp.setattr(zipfile, "_get_compressor", lambda *a: _DeflatedZeroChunks())
                    with zout.open(entry, "w", force_zip64=True) as f:
                        for _ in range(stream[1] // len(ZERO_CHUNK)):
                            f.write(ZERO_CHUNK)
                continue
            data = next((v for k, v in (replace or {}).items() if name.endswith(k)), None)
            zout.writestr(info, zin.read(name) if data is None else data)
        if extra:
            zout.writestr(extra[0], extra[1])
    return dst


def marked_tensor_payload(where: str, numel: int) -> tuple[dict, str]:
    """The QAT payload with a float tensor of ``numel`` elements at ``where`` (``state_dict:NAME`` or ``NAME``),
    and the storage key it gets when saved."""
    data = payload()
    marker = torch.zeros(numel)
    if where.startswith("state_dict:"):
        sd = data["state_dict"]
        name = where.split(":", 1)[1]
        key = str(list(sd).index(name))
        sd[name] = marker
    else:
        key = str(len(data["state_dict"]) + sum(1 for v in _tensors(data.get("train_state"))))
        data[where] = marker
    return data, key


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)


def bomb(tmp: Path, where: str, numel: int) -> Path:
    """A checkpoint whose tensor at ``where`` declares ``numel`` float32 zeros, stored deflated: a few MB on
    disk, ``4 * numel`` bytes once read."""
    marker = 777
    data, key = marked_tensor_payload(where, marker)
    small = save(tmp, data, "small.pt")
    with zipfile.ZipFile(small) as z:
        pkl_name = next(n for n in z.namelist() if n.endswith("data.pkl"))
        pkl = z.read(pkl_name)
    big = b"J" + struct.pack("<i", numel)
    assert pkl.count(b"M\x09\x03") == 2  # BININT2 777: the storage's numel and the tensor's size
    pkl = pkl.replace(b"M\x09\x03", big)
    out = zip_rewrite(small, tmp / "bomb.pt", replace={"data.pkl": pkl}, stream=(f"/data/{key}", 4 * numel))
    small.unlink()
    return out


def bad_crc(tmp: Path) -> Path:
    """The QAT checkpoint with one byte of a weight's record flipped (the archive's CRC-32 no longer matches)."""
    raw = bytearray(QAT_MODEL.read_bytes())
    with zipfile.ZipFile(QAT_MODEL) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data/8"))
    start = info.header_offset + 30 + len(info.filename.encode()) + struct.unpack(
        "<H", raw[info.header_offset + 28: info.header_offset + 30])[0]
    raw[start + 5] ^= 0x40
    path = tmp / "m.pt"
    path.write_bytes(bytes(raw))
    return path


def sparse(tmp: Path) -> Path:
    data = payload()
    name = "stem.cb.bn.bias"
    data["state_dict"][name] = data["state_dict"][name].to_sparse()
    return save(tmp, data)


def duplicate_entry(tmp: Path) -> Path:
    with zipfile.ZipFile(QAT_MODEL) as z:
        name = next(n for n in z.namelist() if n.endswith("/data/0"))
    with pytest.warns(UserWarning):
        return zip_rewrite(QAT_MODEL, tmp / "m.pt", extra=(name, bytes(576)))


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def pickled_object(tmp: Path) -> Path:
    data = payload()
    data["meta"] = _Payload()
    return save(tmp, data)


def fifo(tmp: Path, name: str) -> Path:
    path = tmp / name
    os.mkfifo(path)
    return path


def link_to(tmp: Path, name: str, target: str) -> Path:
    path = tmp / name
    path.symlink_to(target)
    return path


def cifar10_checkpoint(tmp: Path) -> Path:
    """A 32x32x3, 10-class checkpoint trained (so its meta says) on cifar10, and a CIFAR-100 test file."""
    from xoresnet.checkpoint import save_checkpoint
    from xoresnet.network import build_network

    cfg = small_config(input_size=32, in_channels=3, num_classes=10, input_levels=255)
    path = tmp / "c10.pt"
    save_checkpoint(path, build_network(cfg), {"dataset": "cifar10"})
    folder = tmp / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        with open(folder / split, "wb") as f:
            import pickle

            pickle.dump({b"data": rng.integers(0, 256, (40, 3072), dtype=np.uint8),
                         b"fine_labels": rng.integers(0, 100, 40).tolist()}, f)
    return path


def fashion_checkpoint(tmp: Path, images: bytes, labels: bytes) -> Path:
    """A 28x28 fashion-mnist checkpoint and a FashionMNIST/raw folder with the given t10k IDX files (gzipped
    when the content starts with the gzip magic)."""
    from xoresnet.checkpoint import save_checkpoint
    from xoresnet.network import build_network

    cfg = small_config(input_size=28, num_classes=10, input_levels=255)
    path = tmp / "f.pt"
    save_checkpoint(path, build_network(cfg), {"dataset": "fashion-mnist"})
    raw = tmp / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    gz = images[:2] == b"\x1f\x8b"
    (raw / f"t10k-images-idx3-ubyte{'.gz' if gz else ''}").write_bytes(images)
    (raw / f"t10k-labels-idx1-ubyte{'.gz' if gz else ''}").write_bytes(labels)
    return path


def idx(dims: tuple[int, ...], data: bytes = b"") -> bytes:
    return struct.pack(">BBBB", 0, 0, 8, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + data


def gzip_of_zeros(header: bytes, n: int) -> bytes:
    """A gzip file of ``header`` followed by ``n`` zero bytes, as gzip writes it (built from one compressed
    chunk repeated, see :class:`_DeflatedZeroChunks`)."""
    chunks, rest = divmod(n, len(ZERO_CHUNK))
    crc = zlib.crc32(header)
    for _ in range(chunks):
        crc = zlib.crc32(ZERO_CHUNK, crc)
    crc = zlib.crc32(bytes(rest), crc)
    head = zlib.compressobj(1, zlib.DEFLATED, -15)
    tail = zlib.compressobj(1, zlib.DEFLATED, -15)
    body = (head.compress(header) + head.flush(zlib.Z_FULL_FLUSH) + _DeflatedZeroChunks().block * chunks
            + tail.compress(bytes(rest)) + tail.flush())
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + body + struct.pack("<II", crc, (len(header) + n) % 2**32)


def npy(tmp: Path, array: np.ndarray, name: str = "calib.npy") -> Path:
    path = tmp / name
    np.save(path, array, allow_pickle=True)
    return path


def npy_lying_header(tmp: Path) -> Path:
    """A .npy whose header declares a billion 8x8 images and which holds 100 bytes."""
    path = tmp / "calib.npy"
    header = {"descr": "|u1", "fortran_order": False, "shape": (10**9, 1, 8, 8)}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(bytes(100))
    return path


def report_dir(tmp: Path, make: Callable[[Path], None]) -> Path:
    folder = tmp / "rep"
    folder.mkdir()
    make(folder / "report.json")
    return folder


def sparse_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


# ---------------------------------------------------------------------- inputs: export folders

@pytest.fixture(scope="module")
def certified(tmp_path_factory, digits_export):
    """Export folders made once: ``{"qat": DIR, "float": DIR}`` (digits), and the Lava result of the QAT export
    (the answer of the mocked hardware run). The QAT folder is the session's (conftest :func:`digits_export`: 3
    parity images); the float model is exported here (3 parity images too), the one certificate of another checkpoint
    the rows need. Rows copy a folder before changing it (:func:`copy_export`)."""
    from deploy import cli

    root = tmp_path_factory.mktemp("certified")
    with pytest.raises(SystemExit) as e, contextlib.redirect_stdout(io.StringIO()):
        cli.export_main([str(FLOAT_MODEL), "--out", str(root / "float"), "--parity-samples", "3", "--eval-samples",
                         "20", "--calib-samples", "16", "--no-progress"])
    assert e.value.code == 0
    return {"qat": digits_export.out, "float": root / "float", "lava": digits_export.lava}


def copy_export(tmp: Path, certified, kind: str = "qat") -> Path:
    out = tmp / "out"
    shutil.copytree(certified[kind], out)
    return out


def rehash(out: Path, *names: str) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    for name in names:
        manifest["artifacts"][name] = hashlib.sha256((out / name).read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest))


def edit_manifest(out: Path, edit: Callable[[dict], None]) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))


def edit_graph_weight(out: Path) -> None:
    """Flip the sign of the largest weight of the stem's convolution in integer_graph.h5."""
    import h5py

    with h5py.File(out / "integer_graph.h5", "r+") as f:
        for key in f["synapses"]:
            g = f["synapses"][key]
            if g.attrs["src"] == "input":
                w = g["weight"][()]
                i = np.unravel_index(np.abs(w).argmax(), w.shape)
                w[i] = -w[i]
                del g["weight"]
                g.create_dataset("weight", data=w)
                return
    raise AssertionError("no input synapse")


def forge(out: Path) -> None:
    """What someone who can write the folder can do: edit the graph, then recompute parity.json's record of
    the reference run and predictions, and every hash of the manifest."""
    from calibration.integer_graph import load_integer_graph
    from deploy.export_dir import reference_stream, stream_sha256
    from xoresnet.data import load_dataset

    edit_graph_weight(out)
    parity = json.loads((out / "parity.json").read_text())
    pixels = load_dataset("digits", "test", limit=parity["samples"]).pixels.numpy()
    run = reference_stream(load_integer_graph(out / "integer_graph.h5"), pixels)
    parity["reference_sha256"] = stream_sha256(run)
    parity["predictions"]["reference"] = parity["predictions"]["lava"] = [int(x) for x in run.predictions()[0]]
    (out / "parity.json").write_text(json.dumps(parity))
    rehash(out, "integer_graph.h5", "parity.json")


def graph_of_other_export(tmp: Path, certified) -> Path:
    """The QAT folder with the float export's integer_graph.h5 and all hashes recomputed."""
    out = copy_export(tmp, certified)
    shutil.copy(certified["float"] / "integer_graph.h5", out / "integer_graph.h5")
    rehash(out, "integer_graph.h5")
    return out


def dispatch_argv(out: Path, *extra: str, model: Path = QAT_MODEL) -> list[str]:
    return [str(model), "--out", str(out), "--dispatch", "--timeout", "300", *extra]


def certificate_case(tamper: Callable[[Path], None], *extra: str) -> Callable:
    def prepare(tmp: Path, certified) -> list[str]:
        out = copy_export(tmp, certified)
        tamper(out)
        return dispatch_argv(out, *extra)
    return prepare


# ---------------------------------------------------------------------- the rows

@dataclasses.dataclass
class Case:
    id: str
    klass: str
    command: str  # export | eval | train | report | api
    prepare: Callable  # (tmp_path) or (tmp_path, certified) -> argv (for "api": a callable that asserts)
    code: int  # expected exit code (api rows: 0 = the callable returns)
    error: str = ""  # regex on the one error line (without "PROG: error: ")
    keep: tuple[str, ...] = ()  # paths under tmp_path that must exist afterwards, unchanged
    subprocess: bool = False
    max_rss_mb: Optional[int] = None  # subprocess rows: the command's peak RSS must stay below
    signal_at: Optional[tuple[str, int]] = None  # subprocess rows: (stderr line prefix or "@SECONDS", signal)
    signal_delay: float = 1.0  # seconds from the stderr line to the signal
    heavy: bool = False  # the export's stages may run (a full export or --reverify)
    dispatch: bool = False  # lava-loihi mocked as installed (hardware run answered, see module docstring)
    absent: tuple[str, ...] = ()  # paths under tmp_path that must not exist afterwards
    made: tuple[str, ...] = ()  # files under tmp_path the command must have written
    output: str = ""  # regex on stdout


def ckpt_row(id, prepare, code, error, **kw) -> Case:
    return Case(id, kw.pop("klass", "checkpoint"), "export",
                lambda tmp, p=prepare: [str(p(tmp)), "--out", str(tmp / "out")], code, error, **kw)


def export_row(id, klass, flags, code, error, **kw) -> Case:
    """``xoresnet-export QAT_MODEL --out tmp/out FLAGS`` (``flags``: a list, or a function of tmp_path)."""
    return Case(id, klass, "export",
                lambda tmp, f=flags: [str(QAT_MODEL), "--out", str(tmp / "out"), *(f(tmp) if callable(f) else f)],
                code, error, **kw)


#: Images of the gzip bomb: 28x28 bytes each, just over the 1 GiB an IDX file may declare.
GZ_BOMB_IMAGES = (1 << 30) // 784 + 1
TRAIN = ["--dataset", "digits", "--arch", "xoresnet-digits", "--epochs", "1", "--no-progress"]

CASES: list[Case] = [
    # --- checkpoints: bounded before any tensor is read, CRCs, odd tensors, odd files (exit 3)
    ckpt_row("ckpt-bad-crc", bad_crc, 3, r"is corrupt: archive entry '.*data/8' fails its check"),
    ckpt_row("ckpt-bomb-in-state-dict", lambda t: bomb(t, "state_dict:stem.cb.conv.weight", 1 << 28), 3,
             r"tensor 'stem.cb.conv.weight' is \(268435456,\) torch.float32, its config needs \(16, 1, 3, 3\)",
             subprocess=True, max_rss_mb=800),
    ckpt_row("ckpt-bomb-beside-the-weights", lambda t: bomb(t, "extra", 1 << 28), 3,
             r"its tensors declare 1.0 GiB, but a checkpoint of its config holds at most", subprocess=True,
             max_rss_mb=800),
    ckpt_row("ckpt-numel-beyond-record", lambda t: zip_rewrite(
        QAT_MODEL, t / "m.pt", replace={"data/0": bytes(8)}), 3, r"corrupt"),
    ckpt_row("ckpt-sparse-tensor", sparse, 3, r"tensor 'state_dict.stem.cb.bn.bias' is sparse_coo; xoresnet "
                                              r"checkpoints hold dense tensors only"),
    ckpt_row("ckpt-duplicate-entry", duplicate_entry, 3, r"holds the entry '.*data/0' twice"),
    ckpt_row("ckpt-not-a-zip", lambda t: (t / "m.pt").write_text("hello") and t / "m.pt", 3,
             r"not a readable zip archive .*; a raw pickle or torch.s legacy format is refused, never unpickled"),
    ckpt_row("ckpt-pickled-object", pickled_object, 3, r"carries a pickled Python object \(posix.system\)",
             absent=("pwned",)),
    ckpt_row("ckpt-fifo", lambda t: fifo(t, "m.pt"), 3, r"checkpoint .*m.pt: is a FIFO; a regular file is needed",
             subprocess=True),
    ckpt_row("ckpt-dev-zero", lambda t: link_to(t, "m.pt", "/dev/zero"), 3, r"is a character device"),
    ckpt_row("ckpt-folder", lambda t: (t / "m.pt").mkdir() or t / "m.pt", 3, r"is a folder"),
    # --- absurd configs in a checkpoint: refused by range before anything is built (exit 3)
    ckpt_row("config-depth-1e6", lambda t: edited_config(t, blocks_per_stage=[10**6, 2]), 3,
             r"blocks_per_stage must hold integers in 1\.\.64", klass="config"),
    ckpt_row("config-1e5-stages", lambda t: edited_config(t, blocks_per_stage=[1] * 10**5), 3,
             r"blocks_per_stage must list 1\.\.8 stages, got 100000", klass="config"),
    ckpt_row("config-timesteps-1e5", lambda t: edited_config(t, timesteps=10**5), 3,
             r"timesteps must be in 1\.\.4096, got 100000", klass="config"),
    ckpt_row("config-timesteps-1e400", lambda t: edited_config(t, timesteps=10**400), 3,
             r"timesteps must be in 1\.\.4096, got 1000000", klass="config"),
    ckpt_row("config-timesteps-inf", lambda t: raw_config(t, payload()["config"].replace(
        '"timesteps": 4', '"timesteps": 1e400')), 3, r"field 'timesteps' must be an integer", klass="config"),
    ckpt_row("config-width-factor-1e6", lambda t: edited_config(t, width_factor=1e6), 3,
             r"width_factor in \(0, 16384\]", klass="config"),
    ckpt_row("config-base-width-1e400", lambda t: edited_config(t, base_width=10**400), 3,
             r"base_width must be in 1\.\.16384", klass="config"),
    ckpt_row("config-input-size-1e6", lambda t: edited_config(t, input_size=10**6), 3,
             r"input_size must be in 4\.\.1024", klass="config"),
    ckpt_row("config-classes-1e9", lambda t: edited_config(t, num_classes=10**9), 3,
             r"num_classes in 2\.\.10000", klass="config"),
    ckpt_row("config-threshold-0", lambda t: edited_config(t, neuron={**json.loads(payload()["config"])["neuron"],
                                                                      "vth": 0}), 3,
             r"neuron vth must be positive and finite, got 0", klass="config"),
    ckpt_row("config-deep-json", lambda t: raw_config(t, nested(10**5)), 3, r"network config is nested too deeply|"
                                                                           r"entry 'config' is JSON nested too deeply",
             klass="config"),
    ckpt_row("meta-deep-json", lambda t: raw_config(t, nested(10**5), "meta"), 3,
             r"entry 'meta' is JSON nested too deeply", klass="config"),
    # --- flags (exit 2) and mismatches found up front
    export_row("flag-timesteps-1e5", "flags", ["--timesteps", "100000"], 2, r"--timesteps/-T: must be at most 4096"),
    export_row("flag-timesteps-3000-memory", "flags", ["--timesteps", "3000", "--calib-samples", "512"], 2,
               r"T=3000: the export would need about [\d.]+ GiB of memory \(calibration on 512 images x 3000 "
               r"timesteps x 7,168 LIF neurons; an estimate\), and this machine has [\d.]+ GiB available"),
    export_row("flag-target-empty", "flags", ["--target", ""], 2, r"unknown target ''; available: loihi2"),
    Case("flag-seed-2**64", "flags", "train", lambda t: TRAIN + ["--out", str(t / "m.pt"), "--seed", str(2**64)], 2,
         r"--seed: must be at most 4294967295"),
    Case("flag-seed-negative", "flags", "train", lambda t: TRAIN + ["--out", str(t / "m.pt"), "--seed", "-1"], 2,
         r"--seed: must be >= 0"),
    Case("flag-du-below-1-dv-0", "flags", "train",
         lambda t: TRAIN + ["--out", str(t / "m.pt"), "--du", "0.5", "--dv", "0"], 2,
         r"--du 0.5 --dv 0: du=0.5 < 1 with dv=0"),
    export_row("flag-reverify-without-dispatch", "flags", ["--reverify"], 2, r"use it with --dispatch"),
    Case("mismatch-cifar10-as-cifar100", "mismatch", "export",
         lambda t: [str(cifar10_checkpoint(t)), "--out", str(t / "out"), "--dataset", "cifar100", "--data-dir",
                    str(t / "data")], 2,
         r"--dataset cifar100: the network takes 32x32x3 images with pixels 0\.\.255 in 10 classes, cifar100 has "
         r".* in 100 classes"),
    Case("mismatch-meta-dataset", "mismatch", "export",
         lambda t: [str(raw_config(t, json.dumps({"dataset": "fashion-mnist"}), "meta")), "--out", str(t / "out")], 3,
         r"its meta names dataset 'fashion-mnist', but the network takes 8x8x1"),
    # --- data files: IDX headers checked against the file, streamed (exit 3)
    Case("idx-gzip-bomb-1gib", "data", "eval",
         lambda t: [str(fashion_checkpoint(t, gzip_of_zeros(idx((GZ_BOMB_IMAGES, 28, 28)), GZ_BOMB_IMAGES * 784),
                                           gzip.compress(idx((10,), bytes(10))))),
                    "--data-dir", str(t / "data")], 3,
         r"IDX header declares \d+x28x28 = \d+ bytes of data, more than the 1073741824 bytes an image file may hold",
         subprocess=True, max_rss_mb=900),
    Case("idx-gzip-size-mismatch", "data", "eval",
         lambda t: [str(fashion_checkpoint(t, gzip.compress(idx((10, 28, 28), bytes(5 * 784))),
                                           gzip.compress(idx((10,), bytes(10))))), "--data-dir", str(t / "data")], 3,
         r"gzip trailer records 3936 bytes uncompressed .*truncated or corrupt"),
    Case("idx-plain-truncated", "data", "eval",
         lambda t: [str(fashion_checkpoint(t, idx((10, 28, 28), bytes(5 * 784)), idx((10,), bytes(10)))),
                    "--data-dir", str(t / "data")], 3, r"declares 10x28x28 = 7840 bytes of data but the file holds 3920"),
    # --- unbounded reads: regular files only, with a size limit (exit 3)
    export_row("energy-table-dev-zero", "reads", lambda t: ["--energy-table", "/dev/zero"], 3,
               r"energy table /dev/zero: is a character device"),
    export_row("energy-table-fifo", "reads", lambda t: ["--energy-table", str(fifo(t, "e.json"))], 3,
               r"energy table .*e.json: is a FIFO", subprocess=True),
    export_row("energy-table-2mb", "reads", lambda t: (sparse_file(t / "e.json", 2 << 20), ["--energy-table",
                                                                                            str(t / "e.json")])[1], 3,
               r"2.0 MiB is larger than the 1.0 MiB such a file may have"),
    export_row("calib-data-fifo", "reads", lambda t: ["--calib-data", str(fifo(t, "c.npy"))], 3,
               r"--calib-data .*c.npy: is a FIFO", subprocess=True),
    export_row("calib-data-dev-zero", "reads", lambda t: ["--calib-data", "/dev/zero"], 3,
               r"--calib-data /dev/zero: is a character device"),
    export_row("calib-data-npz", "reads", lambda t: (np.savez(t / "c.npz", x=np.zeros((2, 1, 8, 8), np.uint8)),
                                                     ["--calib-data", str(t / "c.npz")])[1], 3,
               r"is a \.npz archive \(several arrays\); --calib-data takes one \.npy array"),
    export_row("calib-data-lying-header", "reads", lambda t: ["--calib-data", str(npy_lying_header(t))], 3,
               r"declares \(1000000000, 1, 8, 8\) uint8 \(64000000000 bytes\), the file holds 100"),
    export_row("calib-data-object-array", "reads",
               lambda t: ["--calib-data", str(npy(t, np.array([{"a": 1}], dtype=object)))], 3,
               r"need integer pixels of shape|not a readable \.npy"),
    Case("report-json-fifo", "reads", "report", lambda t: [str(report_dir(t, os.mkfifo))], 3,
         r"report.json: is a FIFO", subprocess=True),
    Case("report-json-dev-zero", "reads", "report",
         lambda t: [str(report_dir(t, lambda p: p.symlink_to("/dev/zero")))], 3, r"report.json: is a character device"),
    Case("report-json-300mb", "reads", "report",
         lambda t: [str(report_dir(t, lambda p: sparse_file(p, 300 << 20)))], 3,
         r"300.0 MiB is larger than the 256.0 MiB"),
]


def _stratified(labels: list[int], classes: int, n: int) -> None:
    counts = np.bincount(labels, minlength=classes)
    assert counts.max() - counts.min() <= 1 and len(labels) == n, labels


def miniimagenet_subsets(tmp: Path) -> None:
    """A miniImageNet test split sorted by class (3 classes x 4 images): every first-N subset the commands take
    (load_dataset's limit, the export's evaluation and parity images) holds every class."""
    from PIL import Image

    from xoresnet.data import load_dataset

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("n01", "n02", "n03"):
            for i in range(4):
                path = tmp / "miniImageNet" / split / c / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)).save(path)
    assert load_dataset("miniimagenet", "test", tmp, limit=3).labels.tolist() == [0, 1, 2]
    full = load_dataset("miniimagenet", "test", tmp).labels.tolist()
    assert full == [0, 1, 2] * 4
    for n in range(1, 13):
        _stratified(full[:n], 3, n)


def fashion_subsets(tmp: Path) -> None:
    """A Fashion-MNIST test split sorted by class (10 classes x 5): --limit 10 takes one of each."""
    from xoresnet.data import load_dataset

    labels = np.repeat(np.arange(10, dtype=np.uint8), 5)
    raw = tmp / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte").write_bytes(idx((50, 28, 28), bytes(50 * 784)))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(idx((50,), labels.tobytes()))
    assert sorted(load_dataset("fashion-mnist", "test", tmp, limit=10).labels.tolist()) == list(range(10))


def digits_parity_images(tmp: Path) -> None:
    """The export's parity and evaluation images are the first N of the test split: stratified."""
    from xoresnet.data import load_dataset

    labels = load_dataset("digits", "test").labels.tolist()
    for n in (4, 10, 20, 100):
        _stratified(labels[:n], 10, n)


def stale_lava_scratch(tmp: Path) -> None:
    """A parent killed (SIGKILL) after its Lava child finished leaves $TMPDIR/xoresnet-lava-PID-*: the next run
    removes it; a live parent's folder, and a folder that is not ours, stay."""
    import tempfile

    from deploy import lava_run

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp / f"xoresnet-lava-{int(dead.stdout)}-abc"
    live = tmp / f"xoresnet-lava-{os.getpid()}-def"
    other = tmp / f"xoresnet-lava-{int(dead.stdout)}-ghi"
    for folder in (stale, live, other):
        folder.mkdir()
    (stale / "job.json").write_text("{}")
    (live / "job.json").write_text("{}")
    (other / "notes.txt").write_text("not ours")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(tmp))
        assert lava_run.remove_stale_scratch() == [stale.name]
    assert not stale.exists() and live.exists() and other.exists()


CASES += [
    Case("subsets-miniimagenet", "subsets", "api", miniimagenet_subsets, 0),
    Case("subsets-fashion-limit", "subsets", "api", fashion_subsets, 0),
    Case("subsets-digits-parity", "subsets", "api", digits_parity_images, 0),
    Case("leftover-lava-scratch", "interrupts", "api", stale_lava_scratch, 0),
]

# --- the parity certificate: --dispatch with lava-loihi mocked (exit 5 unless said)
DISPATCHED = r"dispatch: Loihi 2 ran 3 parity images \(\d+ steps, [\d.]+ s\): predictions \[.*\], equal to"
CERT = [
    ("tampered-graph-rehashed", lambda o: (edit_graph_weight(o), rehash(o, "integer_graph.h5")), (), 5,
     r"integer_graph.h5 does not give the integer reference run parity.json records"),
    ("graph-of-another-export", None, (), 5, r"integer_graph.h5 does not give the integer reference run"),
    ("parity-json-steps-not-the-graphs", lambda o: (
        (o / "parity.json").write_text(json.dumps({**json.loads((o / "parity.json").read_text()), "steps": 99})),
        rehash(o, "parity.json")), (), 5,
     r"integer_graph.h5 is not the graph parity.json certifies \(stream steps: \d+ in the graph, 99 in parity.json\)"),
    ("manifest-lists-some-artifacts", lambda o: edit_manifest(o, lambda m: m["artifacts"].pop("report.html")), (),
     5, r"the manifest does not cover report.html"),
    ("manifest-names-parent-path", lambda o: edit_manifest(o, lambda m: m["artifacts"].update(
        {"../x": "0" * 64})), (), 5, r"names '\.\./x', a path outside the export folder"),
    ("manifest-names-absolute-path", lambda o: edit_manifest(o, lambda m: m["artifacts"].update(
        {"/etc/passwd": "0" * 64})), (), 5, r"names '/etc/passwd', a path outside the export folder"),
    ("manifest-names-other-file", lambda o: edit_manifest(o, lambda m: m["artifacts"].update(
        {"model.onnx": "0" * 64})), (), 5, r"names 'model.onnx', which is not an artifact of an export"),
    ("manifest-artifacts-a-list", lambda o: edit_manifest(o, lambda m: m.update(artifacts=[])), (), 5,
     r"'artifacts' must map file names to SHA-256 digests"),
    ("manifest-not-json", lambda o: (o / "manifest.json").write_text("{"), (), 5,
     r"manifest.json is not valid JSON \(line 1, column 2"),
    ("parity-json-not-json", lambda o: ((o / "parity.json").write_text("{"), rehash(o, "parity.json")), (), 5,
     r"parity.json is not valid JSON"),
    ("parity-json-a-list", lambda o: ((o / "parity.json").write_text("[]"), rehash(o, "parity.json")), (), 5,
     r"parity.json must be a JSON object"),
    ("parity-json-passed-yes", lambda o: (
        (o / "parity.json").write_text(json.dumps({**json.loads((o / "parity.json").read_text()), "passed": "yes"})),
        rehash(o, "parity.json")), (), 5, r"the parity check failed"),
    ("parity-json-disagrees-with-verdict", lambda o: (
        (o / "parity.json").write_text(json.dumps({**json.loads((o / "parity.json").read_text()),
                                                   "neuron_steps_compared": 7})), rehash(o, "parity.json")), (), 5,
     r"the manifest's verdict \(neuron_steps_compared \d+\) and .*parity.json \(neuron_steps_compared 7\) disagree"),
    ("artifact-is-a-symlink", lambda o: (shutil.move(o / "report.html", o.parent / "elsewhere.html"),
                                         (o / "report.html").symlink_to(o.parent / "elsewhere.html")), (), 5,
     r"report.html is not a regular file"),
    ("first-failing-artifact-named", lambda o: [(o / n).write_text("x") for n in ("report.html", "model.nir")], (), 5,
     r"model.nir is not the file the parity certificate covers"),
    ("missing-artifact", lambda o: (o / "calibration.json").unlink(), (), 5, r"calibration.json is missing"),
    ("another-checkpoint", lambda o: None, ("@float",), 5, r"certifies another checkpoint"),
    ("export-flag-with-existing-folder", lambda o: None, ("--timesteps", "5"), 2,
     r"holds an export, which --dispatch verifies and runs as it is: --timesteps would change the export"),
    ("intact-folder-dispatched-as-is", lambda o: None, (), 0, ""),
    ("forged-folder-passes-the-hash-checks", forge, (), 0, ""),  # integrity, not authenticity (README)
]
for cid, tamper, extra, code, error in CERT:
    def prepare(tmp, certified, tamper=tamper, extra=extra, cid=cid):
        out = graph_of_other_export(tmp, certified) if cid == "graph-of-another-export" else copy_export(tmp, certified)
        if tamper:
            tamper(out)
        model = FLOAT_MODEL if "@float" in extra else QAT_MODEL
        return dispatch_argv(out, *(x for x in extra if x != "@float"), model=model)
    CASES.append(Case(f"cert-{cid}", "certificate", "export", prepare, code, error, dispatch=True,
                      keep=("out",) if code == 0 else (), output=DISPATCHED if code == 0 else ""))

CASES += [
    Case("cert-forged-folder-with-reverify", "certificate", "export",
         lambda t, c: (forge(copy_export(t, c)), dispatch_argv(t / "out", "--reverify"))[1], 5,
         r"--reverify: .*integer_graph.h5 is not the integer graph of .*xoresnet-digits-qat.pt \(first difference: "
         r"synapse stem.cb: weight\)", dispatch=True, heavy=True),
    Case("cert-reverify-qat", "certificate", "export",
         lambda t, c: dispatch_argv(copy_export(t, c), "--reverify"), 0, "", dispatch=True, heavy=True, keep=("out",),
         output=DISPATCHED),
    Case("cert-reverify-float", "certificate", "export",
         lambda t, c: dispatch_argv(copy_export(t, c, "float"), "--reverify", model=FLOAT_MODEL), 0, "", dispatch=True,
         heavy=True, keep=("out",), output=DISPATCHED),
    Case("dispatch-without-lava-loihi-new-folder", "certificate", "export",
         lambda t: [str(QAT_MODEL), "--out", str(t / "out"), "--dispatch"], 7,
         r"Loihi 2 dispatch needs lava-loihi, which is not installed", absent=("out",)),
    Case("dispatch-without-lava-loihi-existing-folder", "certificate", "export",
         lambda t, c: dispatch_argv(copy_export(t, c)), 7, r"needs lava-loihi", keep=("out",)),
]

# --- interruptions: signals are Ctrl-C (subprocess rows; an earlier export in --out must survive)
def earlier_export(tmp: Path, certified) -> list[str]:
    copy_export(tmp, certified)
    return [str(QAT_MODEL), "--out", str(tmp / "out"), "--eval-samples", "20", "--parity-samples", "8"]


def earlier_export_calibrating_long(tmp: Path, certified) -> list[str]:
    """:func:`earlier_export` calibrated on every digits training image (1,347): ~2.5 s of calibration
    (64 images take ~0.2 s), so that a signal sent when stage 3 starts lands in it."""
    return earlier_export(tmp, certified) + ["--calib-samples", "1347"]


CASES += [
    Case("sigterm-during-calibration", "interrupts", "export", earlier_export_calibrating_long, 128 + signal.SIGTERM, "",
         subprocess=True, signal_at=("[3/8]", signal.SIGTERM), signal_delay=0.0, keep=("out",)),
    Case("sighup-during-calibration", "interrupts", "export", earlier_export_calibrating_long, 128 + signal.SIGHUP, "",
         subprocess=True, signal_at=("[3/8]", signal.SIGHUP), signal_delay=0.0, keep=("out",)),
    Case("sigterm-during-lava", "interrupts", "export", earlier_export, 128 + signal.SIGTERM, "",
         subprocess=True, signal_at=("[6/8]", signal.SIGTERM), keep=("out",)),
    Case("sigint-during-imports-export", "interrupts", "export", lambda t: [str(QAT_MODEL), "--out", str(t / "o")],
         130, "", subprocess=True, signal_at=("@0.25", signal.SIGINT)),
    Case("sigint-during-imports-train", "interrupts", "train", lambda t: TRAIN + ["--out", str(t / "m.pt")], 130, "",
         subprocess=True, signal_at=("@0.25", signal.SIGINT)),
    Case("sigint-during-imports-eval", "interrupts", "eval", lambda t: [str(QAT_MODEL)], 130, "", subprocess=True,
         signal_at=("@0.25", signal.SIGINT)),
]

# --- report.json the renderer must refuse (exit 3, the first problem named) or draw within bounds (exit 0): built
# from a real report of the digits model (conftest.digits_report), edited as a dict or as JSON text
def report_case(id, edit, code, error="", text=None, **kw) -> Case:
    """``xoresnet-report rep/`` on the digits report with ``edit(report)`` applied (and ``text(json_text)``)."""
    def prepare(tmp: Path) -> list[str]:
        from conftest import digits_report

        report = digits_report()
        edit(report)
        raw = json.dumps(report)
        return [str(report_dir(tmp, lambda p: p.write_text(text(raw) if text else raw)))]
    done = dict(keep=("rep/report.json",), made=("rep/report.html",), output=r"wrote .*rep/report.html") if code == 0 \
        else dict(absent=("rep/report.html",))
    return Case(f"report-{id}", "report", "report", prepare, code, error, **done, **kw)


def _set_in(path: tuple, value) -> Callable[[dict], None]:
    def edit(report: dict) -> None:
        for key in path[:-1]:
            report = report[key]
        report[path[-1]] = value
    return edit


def many_layers(report: dict, n: int = 5000) -> None:
    """``n`` populations in every per-layer section (named ``l0``, ``l1``, ...)."""
    for section in (report["drc"]["layers"], report["statistics"]["layers"]):
        section[:] = [dict(section[0], name=f"l{i}") for i in range(n)]


def dense_raster(report: dict, timesteps: int = 4096, spikes: int = 65536, populations: int = 16) -> None:
    """A raster at the schema's bounds: ``timesteps`` steps, ``spikes`` spikes in each of ``populations``."""
    rng = np.random.default_rng(0)
    report["raster"].update(timesteps=timesteps, populations={f"p{i}": {
        "neurons": 1024, "t": rng.integers(0, timesteps, spikes).tolist(), "n": rng.integers(0, 1024, spikes).tolist(),
        "total": spikes, "truncated": False} for i in range(populations)})


def first_number(key: str, replacement: str) -> Callable[[str], str]:
    """A JSON text edit: the first ``"key": <number>`` gets ``replacement`` as its value."""
    return lambda raw: re.sub(rf'"{key}": -?[\d.e+-]+', f'"{key}": {replacement}', raw, count=1)


CASES += [
    report_case("unknown-sign-mode", _set_in(("drc", "layers", 0, "sign_modes"), ["weird"]), 3,
                r"report\.drc\.layers\[0\]\.sign_modes\[0\]: expected one of 'mixed', 'excitatory', 'inhibitory', "
                r"got 'weird'"),
    report_case("unknown-kind", _set_in(("statistics", "layers", 0, "kind"), "weird"), 3,
                r"report\.statistics\.layers\[0\]\.kind: expected one of 'neuron', 'gate', 'relay', 'partial_sum', 'readout'"),
    report_case("unknown-merge", _set_in(("statistics", "blocks", 0, "merge"), "nand"), 3,
                r"report\.statistics\.blocks\[0\]\.merge: expected one of 'or', 'xor', 'add', 'iand', 'add_current'"),
    report_case("deep-json", _set_in(("model", "config", "deep"), json.loads(nested(40))), 3,
                r"report\.model\.config\.deep\[0\].*: nested 33 levels deep; a report nests at most 32"),
    report_case("deep-json-1e5", lambda r: None, 3, r"is JSON nested too deeply for a report",
                text=lambda raw: raw.replace('"warnings": []', f'"warnings": {nested(10**5)}', 1)),
    report_case("300k-objects", lambda r: None, 3, r"report: holds more than 262,144 JSON objects",
                text=lambda raw: raw.replace('"warnings": [', '"unknown": [' + "{}," * 300_000 + '{}], "warnings": [', 1)),
    report_case("raster-timesteps-1e7", _set_in(("raster", "timesteps"), 10**7), 3,
                r"report\.raster\.timesteps: must be at most 4096, got 10000000"),
    report_case("timesteps-a-float", _set_in(("latency", "timesteps"), 4.0), 3,
                r"report\.latency\.timesteps: expected an integer, got float"),
    report_case("nan", lambda r: None, 3, r"report.json holds NaN, which JSON does not allow",
                text=first_number("firing_rate", "NaN")),
    report_case("integer-of-5000-digits", lambda r: None, 3, r"report.json holds an integer too long to convert",
                text=first_number("cores", "1" * 5000)),
    report_case("integer-beyond-int64", _set_in(("drc", "packing", "cores"), 10**30), 3,
                r"report\.drc\.packing\.cores: expected an integer, got an integer beyond the int64 range"),
    report_case("name-of-300-characters", _set_in(("drc", "layers", 0, "name"), "x" * 300), 3,
                r"report\.drc\.layers\[0\]\.name: 'x+\.\.\. is 300 characters long, more than 256"),
    report_case("unpaired-surrogate", _set_in(("warnings",), ["\ud800"]), 3,
                r"report\.warnings\[0\]: holds an unpaired surrogate, which UTF-8 cannot encode"),
    report_case("section-null", _set_in(("drc",), None), 3, r"report\.drc: must not be null"),
    report_case("5000-layers", many_layers, 0),
    # xoresnet-report imports only the standard library, jsonschema and Jinja2 before its work (0.2 s): a SIGTERM
    # 1 s in lands while it renders 5,000 layers (3-5 s): one line, exit 143, no page written
    report_case("sigterm-while-rendering", many_layers, 128 + signal.SIGTERM, "", subprocess=True,
                signal_at=("@1.0", signal.SIGTERM)),
    report_case("raster-at-the-bounds", dense_raster, 0),
    report_case("mathtext-in-names", lambda r: [layer.update(name=f"${layer['name']}\\frac{{$")
                                                for layer in r["drc"]["layers"] + r["statistics"]["layers"]], 0),
    report_case("energy-maps-disagree", lambda r: r["energy"]["loihi"]["counts"].clear(), 0),
]

PROGS = {"export": "xoresnet-export", "eval": "xoresnet-eval", "train": "xoresnet-train", "report": "xoresnet-report"}
HEAVY_STAGES = {"export": [("deploy.cli", "export_loihi"), ("deploy.cli", "export_onnx_target")],
                "train": [("xoresnet.training", "train")], "eval": [("xoresnet.training", "evaluate")], "report": []}


# ---------------------------------------------------------------------- running a row

def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted([path, *path.rglob("*")]) if path.is_dir() else [path]:
        h.update(str(p.relative_to(path.parent)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def main_of(command: str) -> Callable:
    from deploy.cli import export_main
    from hw_targets.cli import report_main
    from xoresnet.cli import eval_main, train_main

    return {"export": export_main, "eval": eval_main, "train": train_main, "report": report_main}[command]


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise TimeoutError in this thread after ``seconds`` (a row that hangs fails instead of hanging the suite)."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


#: A row's command may allocate this much beyond what the process holds (a regression that reads without bound
#: then fails with MemoryError instead of taking the machine's memory).
ROW_MEMORY = 3 << 30


@contextlib.contextmanager
def memory_guard():
    """Cap this process's data segment (``RLIMIT_DATA``: heap and private mappings) at its current size plus
    :data:`ROW_MEMORY` while a row runs in it."""
    import resource

    status = Path("/proc/self/status").read_text()
    used = int(re.search(r"VmData:\s+(\d+) kB", status).group(1)) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = used + ROW_MEMORY if hard == resource.RLIM_INFINITY else min(hard, used + ROW_MEMORY)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def limit_child_memory() -> None:
    """``preexec_fn`` of the subprocess rows: the same cap for the command (torch's own mappings included)."""
    import resource

    resource.setrlimit(resource.RLIMIT_DATA, (4 << 30, resource.getrlimit(resource.RLIMIT_DATA)[1]))


def mock_hardware(mp, certified, heavy: bool) -> None:
    """lava-loihi mocked as installed with a host; the hardware run answered with the export's Lava result."""
    from deploy import lava_run
    from hw_targets import loihi2

    real = lava_run.run_lava

    def run(graph, pixels, **kw):
        if kw.get("run_config") == "hw":
            return dataclasses.replace(certified["lava"], run_config="hw")
        if not heavy:
            raise AssertionError("a Lava simulation started")
        return real(graph, pixels, **kw)

    mp.setattr(loihi2, "missing_loihi2_modules", lambda: [])
    mp.setenv("NXSDKHOST", "loihi2.test")
    mp.setattr(lava_run, "run_lava", run)


def run_in_process(case: Case, argv: list[str], tmp: Path, certified) -> tuple[int, str, str]:
    import importlib

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        if not case.heavy:
            for module, name in HEAVY_STAGES[case.command]:
                mp.setattr(importlib.import_module(module), name,
                           lambda *a, **k: (_ for _ in ()).throw(AssertionError("work started before the check")))
        if case.dispatch:
            mock_hardware(mp, certified, case.heavy)
        mp.chdir(tmp)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), time_limit(600 if case.heavy else 60), \
                memory_guard():
            try:
                main_of(case.command)(argv)
                code = 0
            except SystemExit as e:
                code = e.code
    return code, out.getvalue(), err.getvalue()


def run_subprocess(case: Case, argv: list[str], tmp: Path) -> tuple[int, str, str]:
    """The console script (``TMPDIR`` = ``tmp``), signalled as the row says; returns (exit code, stdout, stderr)."""
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([str(BIN / PROGS[case.command]), *argv], cwd=tmp, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, preexec_fn=limit_child_memory)
    err_lines: list[str] = []
    if case.signal_at:
        when, sig = case.signal_at
        if when.startswith("@"):
            time.sleep(float(when[1:]))
        else:
            for line in p.stderr:
                err_lines.append(line)
                if line.startswith(when):
                    break
            time.sleep(case.signal_delay)
        p.send_signal(sig)
    try:
        out, rest = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        out, rest = p.communicate()
        rest += "\n(timed out)"
    return p.returncode, out, "".join(err_lines) + rest


def run_measured(argv: list[str], tmp: Path) -> tuple[int, str, float]:
    """Run ``argv`` and return (exit code, stderr, peak RSS in MB) from ``wait4``."""
    env = {**os.environ, "TMPDIR": str(tmp)}
    with open(tmp / ".stderr", "w") as err:
        p = subprocess.Popen(argv, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=err, preexec_fn=limit_child_memory)
        deadline = time.time() + 180
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                p.kill()
                pid, status, usage = os.wait4(p.pid, 0)
                break
            time.sleep(0.05)
    p.returncode = os.waitstatus_to_exitcode(status)
    text = (tmp / ".stderr").read_text()
    (tmp / ".stderr").unlink()
    return p.returncode, text, usage.ru_maxrss / 1024


def leftovers(tmp: Path) -> list[str]:
    """What a command of this row left: temporary export folders, Lava scratch folders (its own ``TMPDIR`` is
    ``tmp``; in this process, those named after this pid), processes still running in ``tmp``."""
    import tempfile

    found = [p.name for p in tmp.rglob(".*") if ".partial-" in p.name or ".old-" in p.name]
    found += [p.name for p in Path(tempfile.gettempdir()).glob(f"xoresnet-lava-{os.getpid()}-*")]
    found += [p.name for p in tmp.glob("xoresnet-lava-*")]
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and str(tmp).encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(f"process {entry}")
        except OSError:
            pass
    return found


def _needs_export(case: Case) -> bool:
    """Whether the row's input is built from the module's export folders (:func:`certified`)."""
    return sum(p.default is p.empty for p in inspect.signature(case.prepare).parameters.values()) == 2


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.lava] if _needs_export(c) or c.dispatch
                                               or c.heavy else []) for c in CASES])
def test_battery(case: Case, tmp_path, request):
    if case.command == "api":
        case.prepare(tmp_path)
        return
    needs_export = _needs_export(case)
    certified = request.getfixturevalue("certified") if needs_export or case.dispatch else None
    argv = case.prepare(tmp_path, certified) if needs_export else case.prepare(tmp_path)
    kept = {name: tree_digest(tmp_path / name) for name in case.keep}
    out = ""
    if case.max_rss_mb is not None:
        code, err, rss = run_measured([str(BIN / PROGS[case.command]), *argv], tmp_path)
        assert rss < case.max_rss_mb, f"peak RSS {rss:.0f} MB (limit {case.max_rss_mb} MB): {err[-300:]}"
    elif case.subprocess:
        code, out, err = run_subprocess(case, argv, tmp_path)
    else:
        code, out, err = run_in_process(case, argv, tmp_path, certified)
    prog = PROGS[case.command]
    assert code == case.code, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    last = err.strip().splitlines()[-1] if err.strip() else ""
    if case.code in (130, 128 + signal.SIGTERM, 128 + signal.SIGHUP):
        assert re.fullmatch(rf"{prog}: interrupted( \(SIG(TERM|HUP)\))?", last), err[-2000:]
    elif case.code != 0:
        assert last.startswith(f"{prog}: error: ") and sum("error:" in line for line in err.splitlines()) == 1, err
        assert re.search(case.error, last), last
    assert re.search(case.output, out), out[-2000:]
    for name, digest in kept.items():
        assert (tmp_path / name).exists() and tree_digest(tmp_path / name) == digest, f"{name} changed or is gone"
    for name in case.absent:
        assert not (tmp_path / name).exists(), f"{name} exists"
    for name in case.made:
        assert (tmp_path / name).is_file(), f"{name} was not written"
    assert leftovers(tmp_path) == []


def test_battery_covers_every_class():
    assert {c.klass for c in CASES} == {"checkpoint", "config", "flags", "mismatch", "data", "reads", "subsets",
                                        "certificate", "interrupts", "report"}


def test_memory_estimate_names_what_it_needs_and_what_fits(monkeypatch):
    """The estimate follows T and the images (measured figures: module docstring of deploy.memory). With 4 GiB
    available the NIR check halves its batch until it fits (T=128: 256 images at once would need 6.6 GB), and
    an export whose calibration cannot fit (T=1024) is refused with both figures and the T that fits."""
    from deploy import memory
    from xoresnet.checkpoint import load_checkpoint
    from xoresnet.errors import UsageError

    config = load_checkpoint(QAT_MODEL).config
    n = memory.lif_neurons(config)
    images = dict(check_batch=256, calib_images=64, parity_images=4)
    need4, what = memory.estimate_export_memory(4, n, **images)
    need64, _ = memory.estimate_export_memory(64, n, **images)
    assert what == "the NIR check of 256 images at once x 4 timesteps x 7,168 LIF neurons"
    assert need64 - memory.BASE_BYTES == 16 * (need4 - memory.BASE_BYTES)
    assert 3.0 < need64 / 2**30 < 4.0  # measured: 3.8 GB peak RSS for the whole export at T=64
    four = 4 << 30
    assert memory.nir_check_batch(4, n, eval_images=450, available=None) == 256
    assert memory.nir_check_batch(4, n, eval_images=100, available=four) == 100
    batch = memory.nir_check_batch(128, n, eval_images=450, available=four)
    assert batch == 128 and memory.estimate_export_memory(128, n, **{**images, "check_batch": batch})[0] <= four
    monkeypatch.setattr(memory, "available_memory", lambda: four)
    flags = dict(eval_images=450, calib_images=64, parity_images=4)
    memory.check_export_memory(128, n, **flags)
    with pytest.raises(UsageError, match=r"T=1024: the export would need about 5\.\d GiB of memory \(calibration on 64 images.* "
                                         r"this machine has 4\.0 GiB available \(at most T=\d+ fits with these images\)"):
        memory.check_export_memory(1024, n, **flags)
