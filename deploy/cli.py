"""``xoresnet-export``: checkpoint or NIR graph -> Loihi integers -> Lava, proved bit-exact before dispatch.

The input is told apart by its content (:func:`xoresnet.nir.reader.is_hdf5_file`): an HDF5 file is a NIR
graph from any producer (read by :mod:`xoresnet.nir.inputs`: bounded, h5py only, imported into our
conventions by :mod:`xoresnet.nir.frontend` with ``--dt``, ``--timesteps``, ``--input-levels``,
``--readout``, ``--nir-convention``, ``--decay-tolerance``, ``--snap-decays``), anything else a
checkpoint. Stages (each a function of :mod:`deploy` / :mod:`calibration` / :mod:`hw_targets`):

1. load the checkpoint (weights-only) or read and import the NIR graph, and the data (calibration
   images: the first N of the training split or ``--calib-data``; evaluation and parity images: the
   first N of the test split);
2. export the float NIR graph (a checkpoint); check the design rules on the architecture alone
   (seconds: a network that cannot fit is refused before any calibration,
   :func:`deploy.pipeline.architecture_check`); check the NIR interpreter against PyTorch (a
   checkpoint), or measure the interpreter's float accuracy (a NIR input: its float baseline);
3. calibrate to Loihi 2 integers (or keep a QAT checkpoint's scales) and balance the delays;
4. design-rule check and core packing for the target with the calibrated weights;
5. integer reference over the evaluation images: accuracy, spike statistics, energy;
6. Lava (``Loihi2SimCfg('fixed_pt')``) on the parity images against the reference in Loihi timing:
   every population, neuron and step must be equal, or the export fails (exit 5);
7. write the artifacts atomically into ``--out`` (``manifest.json`` is the parity certificate);
8. ``--dispatch``: run on Loihi 2 hardware, only after parity passed (the target checks the
   certificate ``manifest.json`` against the files of ``--out`` before it runs).

Every flag is checked before any work (:func:`check_flags`): a bad value is a usage error (exit
code 2, one line, like argparse's own errors), an unreadable or invalid ``--energy-table`` a bad
input file (exit code 3). Exit codes: see :mod:`xoresnet.errors`.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from functools import cached_property
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from deploy.export_dir import (CALIBRATION_FILE, GRAPH_FILE, LAVA_GRAPH_FILE, MANIFEST_FILE, MANIFEST_FORMAT,
                               MANIFEST_VERSION, NIR_FILE, PARITY_FILE, ArtifactDir, holds_manifest, pixels_sha256,
                               resolve_out, stream_sha256)
from xoresnet.nir.dialects import NIR_DIALECTS
from xoresnet.nir.frontend import DEFAULT_DECAY_TOLERANCE
from hw_targets import available_targets, get_target
from hw_targets.loihi2 import DISPATCH_TIMEOUT
from xoresnet.files import file_sha256
from xoresnet.config import MAX_TIMESTEPS
from xoresnet.errors import (
    DataError,
    DispatchUnavailableError,
    OneLineArgumentParser,
    ParityError,
    UnsupportedModelError,
    UsageError,
    number,
    run_cli,
)
from xoresnet.files import open_regular

PROG = "xoresnet-export"
#: What the export draws at random (recorded in the manifest).
EXPORT_RANDOMNESS = ("none: every image set is the first N images of its split in the dataset's fixed order (the test "
                     "split's is class-interleaved, so its subsets are stratified by class), and "
                     "the export draws no random numbers")


def export_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog=PROG,
        description="Export a trained XOResNet checkpoint for Loihi 2: NIR graph, Loihi integer graph, Lava process "
                    "graph, bit-exact parity certificate, resource/energy report; optionally dispatch to hardware.")
    p.add_argument("checkpoint", metavar="MODEL",
                   help="xoresnet checkpoint (.pt) or NIR graph (any producer; told apart by content)")
    p.add_argument("--target", default="loihi2",
                   help=f"deployment target: {', '.join(available_targets())} (default loihi2)")
    p.add_argument("--out", help="artifact folder (default: out/<checkpoint name>); replaced atomically when it is "
                                 "absent, empty or an earlier export; any other folder is refused unless --force")
    p.add_argument("--force", action="store_true",
                   help="add the artifacts to an --out folder that holds other files (nothing there is deleted, and "
                        "no file we did not write is overwritten)")
    p.add_argument("--dataset", help="dataset for calibration, evaluation and parity images (default: the one the "
                                     "checkpoint was trained on)")
    p.add_argument("--data-dir", help="folder with the dataset files (not needed for digits and mnist)")
    p.add_argument("--calib-data", metavar="NPY",
                   help="calibration images as a .npy of integer pixels [N, C, H, W] (default: training split)")
    p.add_argument("--calib-samples", type=number(int, minimum=1, inclusive=True), default=64,
                   help="calibration images, >= 1 (default 64)")
    p.add_argument("--eval-samples", type=number(int, inclusive=True), default=1000,
                   help="test images for the integer accuracy and the report statistics (default 1000; 0 = all; "
                        "at most the test split)")
    p.add_argument("--parity-samples", type=number(int, minimum=1, inclusive=True), default=4,
                   help="test images run on Lava and compared bit for bit with the reference, >= 1 (default 4)")
    p.add_argument("--timesteps", "-T", type=number(int, minimum=1, inclusive=True, maximum=MAX_TIMESTEPS),
                   help=f"override the model's number of timesteps (1..{MAX_TIMESTEPS}; the export refuses what it "
                        "estimates this machine's memory cannot hold)")
    p.add_argument("--timeout", type=number(float), default=DISPATCH_TIMEOUT,
                   help=f"wall-clock limit of each Lava run (simulation, hardware dispatch) in seconds, > 0 "
                        f"(default {DISPATCH_TIMEOUT:g})")
    p.add_argument("--system", choices=[s.key for s in get_target("loihi2").systems],
                   help="Loihi 2 system to pack onto (default: the smallest that fits)")
    p.add_argument("--energy-table", help="JSON file overriding the energy-per-operation table")
    p.add_argument("--dispatch", action="store_true",
                   help="after parity passes, run on Loihi 2 hardware (lava-loihi); an --out that already holds an "
                        "export is verified and dispatched as it is, not exported again")
    p.add_argument("--reverify", action="store_true",
                   help="with --dispatch: before running, derive the integer graph from the checkpoint again and "
                        "re-run the Lava parity on the folder's graph (a hash manifest cannot prove that)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("NIR input (MODEL is a NIR graph)")
    g.add_argument("--dt", type=number(float),
                   help="the time step in the file's time unit (seconds): NIR neurons are continuous-time; required "
                        "unless the file is ours (snnTorch exports: 1e-4; Norse: 1e-3 with --nir-convention norse)")
    g.add_argument("--input-levels", type=number(int, minimum=1, inclusive=True, maximum=255),
                   help="the network input is pixels / this (default: the file's own, else the dataset's largest "
                        "pixel value)")
    g.add_argument("--readout", choices=("spike-count", "membrane"),
                   help="how the last layer gives the class: spike counts of a spiking layer, or the membrane of an LI "
                        "layer (or a synapse chain) averaged over time (default: what the last layer is)")
    g.add_argument("--nir-convention", choices=("nir", "norse"), default="nir",
                   help="what the file's parameters mean: nir (NIR's equations, default; snnTorch's export) or norse "
                        "(norse.torch.to_nir 1.1.0's time constants and current jumps)")
    g.add_argument("--decay-tolerance", type=number(float, inclusive=True), default=DEFAULT_DECAY_TOLERANCE,
                   help="how far a decay dt/tau may lie off Loihi's 12-bit grid and still be taken as the grid value "
                        f"(default {DEFAULT_DECAY_TOLERANCE:g}); beyond it the export is refused")
    g.add_argument("--snap-decays", action="store_true",
                   help="use the nearest grid value for decays beyond --decay-tolerance (the report shows each error)")
    o = p.add_argument_group("checkpoint input")
    o.add_argument("--nir-dialect", choices=NIR_DIALECTS, default="standard",
                   help="how model.nir is written: standard (Threshold nodes for spike logic, dt 1) or for a reader "
                        "without Threshold: snntorch, norse (docs/formats.md: what each reader lacks)")
    return p


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("xoresnet", "torch", "numpy", "scipy", "nir", "h5py", "lava-nc", "onnx", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


#: The largest ``--calib-data`` file read (65,536 images of 3 x 84 x 84 bytes are 1.4 GB).
MAX_CALIB_DATA_BYTES = 4 << 30
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def load_pixels_npy(path: str, shape: tuple[int, ...], levels: int) -> torch.Tensor:
    """``--calib-data``: a ``.npy`` file of integer pixels ``[N, *shape]`` in ``0..levels``, as a uint8 tensor.

    A regular file of at most :data:`MAX_CALIB_DATA_BYTES`; its header (dtype, shape) is checked against
    ``shape`` and the file's size before the data is read. Anything else (a ``.npz`` archive, a pickled
    object array, a FIFO, a device) raises :class:`~xoresnet.errors.DataError` (exit 3), one line."""
    what = f"--calib-data {path}"
    with open_regular(path, what=what, limit=MAX_CALIB_DATA_BYTES) as f:
        if f.read(4) == b"PK\x03\x04":
            raise DataError(f"{what}: is a .npz archive (several arrays); --calib-data takes one .npy array")
        f.seek(0)
        try:
            version = np.lib.format.read_magic(f)
            if version not in _NPY_HEADER_READERS:
                raise ValueError(f"npy format version {version[0]}.{version[1]} (1.0 and 2.0 are read)")
            dims, fortran, dtype = _NPY_HEADER_READERS[version](f)
        except (ValueError, OSError, SyntaxError, TypeError) as e:
            raise DataError(f"{what}: not a readable .npy array ({str(e).strip()[:120]})") from None
        if len(dims) != 4 or tuple(dims[1:]) != tuple(shape) or dims[0] < 1 or dtype.kind not in "iu":
            raise DataError(f"{what}: need integer pixels of shape [N >= 1, {', '.join(map(str, shape))}], "
                            f"got {dtype} {tuple(dims)}")
        need = math.prod(dims) * dtype.itemsize
        holds = os.fstat(f.fileno()).st_size - f.tell()
        if holds != need:
            raise DataError(f"{what}: its header declares {tuple(dims)} {dtype} ({need} bytes), the file holds "
                            f"{holds} (truncated or corrupt)")
        arr = np.fromfile(f, dtype=dtype, count=math.prod(dims)).reshape(dims, order="F" if fortran else "C")
    if arr.min() < 0 or arr.max() > levels:
        raise DataError(f"{what}: pixel values must lie in 0..{levels}")
    return torch.from_numpy(arr.astype(np.uint8))


#: Flags that shape an export: ``--dispatch`` of an existing certified folder runs that export as it is and
#: refuses them (``--calib-data`` is allowed there: ``--reverify`` re-derives the graph with it).
EXPORT_SHAPING = ("timesteps", "dataset", "calib_samples", "eval_samples", "parity_samples", "system",
                  "energy_table", "force", "dt", "input_levels", "readout", "nir_convention", "decay_tolerance",
                  "snap_decays", "nir_dialect")
#: Flags that only a NIR input takes, and only a checkpoint.
NIR_ONLY = ("dt", "input_levels", "readout", "nir_convention", "decay_tolerance", "snap_decays")
CHECKPOINT_ONLY = ("nir_dialect",)


def is_nir_input(args: argparse.Namespace) -> bool:
    """Whether MODEL is a NIR graph (an HDF5 file), told by its content."""
    from xoresnet.nir.reader import is_hdf5_file

    return is_hdf5_file(args.checkpoint)


def out_folder(args: argparse.Namespace) -> Path:
    return Path(args.out or Path("out") / Path(args.checkpoint).stem)


def check_flags(args: argparse.Namespace):
    """Check what argparse cannot, before any work, in this order: the target, ``--dispatch`` on it (a
    target without hardware is a usage error; a missing Loihi 2 stack exits 7 here, before anything runs),
    ``--reverify`` only with ``--dispatch``, the energy table,
    ``--out`` (:class:`~deploy.export_dir.ArtifactDir` refuses a folder it may not replace).

    Returns ``(target, artifact folder, energy_table or None)``; the artifact folder is None when
    ``--dispatch`` names an ``--out`` that already holds an export (a ``manifest.json``): that export is verified
    and dispatched as it is (:func:`dispatch_export`), never exported over. Raises
    :class:`~xoresnet.errors.UsageError` (exit 2), :class:`~xoresnet.errors.DispatchUnavailableError` (exit 7)
    or, for an unreadable or invalid ``--energy-table``, :class:`~xoresnet.errors.DataError` (exit 3)."""
    from hw_targets.energy import EnergyTable

    target = get_target(args.target)
    if args.dispatch and not target.has_hardware:
        raise UsageError(f"--dispatch needs a target with hardware (loihi2): {target.dispatch_status()[1]}")
    if args.dispatch:
        available, why = target.dispatch_status()
        if not available:
            raise DispatchUnavailableError(why)
    if args.reverify and not args.dispatch:
        raise UsageError("--reverify re-checks an export before it is dispatched: use it with --dispatch")
    defaults = export_parser()
    nir_input = is_nir_input(args)
    misplaced = [n for n in (CHECKPOINT_ONLY if nir_input else NIR_ONLY) if getattr(args, n) != defaults.get_default(n)]
    if misplaced:
        flag = "--" + misplaced[0].replace("_", "-")
        raise UsageError(f"{flag} applies to a {'checkpoint' if nir_input else 'NIR graph'}; {args.checkpoint} is a "
                         f"{'NIR graph' if nir_input else 'checkpoint'}")
    if nir_input and target.name == "onnx":
        raise UsageError("the onnx target exports a PyTorch model; a NIR graph deploys to loihi2 or lava-sim")
    if nir_input and not args.dataset and not args.dispatch:
        raise UsageError("a NIR graph does not name its dataset: pass --dataset (its test split gives the evaluation "
                         "and parity images; --calib-data or its training split the calibration images)")
    if nir_input and args.reverify:
        raise UsageError("--reverify re-derives the graph from a checkpoint; for a NIR graph export it again")
    table = EnergyTable.from_json(args.energy_table) if args.energy_table else None
    out = out_folder(args)
    if args.dispatch and holds_manifest(resolve_out(out)):
        shaping = [name for name in EXPORT_SHAPING if getattr(args, name) != defaults.get_default(name)]
        if shaping:
            flag = "--" + shaping[0].replace("_", "-")
            raise UsageError(f"--out {out} holds an export, which --dispatch verifies and runs as it is: {flag} would "
                             "change the export; drop it, or export into another folder")
        return target, None, table
    return target, ArtifactDir(out, force=args.force), table


def load_inputs(args: argparse.Namespace, target):
    """Stage 1: ``(model, checkpoint, dataset name, test split, --calib-data pixels or None)``.

    Checked before the dataset is read: the dataset fits the network (a mismatch named by ``--dataset``
    is a usage error, exit 2; one named by the checkpoint a bad checkpoint, exit 3), and the export's
    estimated memory fits this machine (:func:`deploy.memory.check_export_memory`, exit 2)."""
    from deploy.memory import check_export_memory, lif_neurons
    from xoresnet.checkpoint import load_model
    from xoresnet.data import DATASETS, load_dataset
    from xoresnet.training import require_dataset_fits

    say(f"[1/8] loading {args.checkpoint}")
    model, ckpt = load_model(args.checkpoint)
    if args.timesteps:
        model.config = model.config.replace(timesteps=args.timesteps)
    cfg = model.config
    dataset = args.dataset or ckpt.meta.get("dataset")
    if dataset is None:
        raise DataError("the checkpoint does not name its dataset: pass --dataset")
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    require_dataset_fits(cfg, dataset, named_by_flag=bool(args.dataset), checkpoint=args.checkpoint)
    shape = (cfg.in_channels, cfg.input_size, cfg.input_size)
    calib_pixels = None
    if args.calib_data and target.name != "onnx":
        calib_pixels = load_pixels_npy(args.calib_data, shape, cfg.input_levels)
    if target.name != "onnx":
        check_export_memory(cfg.timesteps, lif_neurons(cfg), eval_images=args.eval_samples or 1 << 62,
                            parity_images=args.parity_samples,
                            calib_images=len(calib_pixels) if calib_pixels is not None else args.calib_samples)
    test = load_dataset(dataset, "test", args.data_dir)
    if tuple(test.pixels.shape[1:]) != shape:
        raise DataError(f"dataset {dataset} has images {tuple(test.pixels.shape[1:])}, the model expects {shape}")
    return model, ckpt, dataset, test, calib_pixels


def export(args: argparse.Namespace) -> int:
    target, artifacts, energy_table = check_flags(args)
    if artifacts is None:
        return dispatch_export(args, target, resolve_out(out_folder(args)))
    out = artifacts.out
    t_start = time.time()
    try:
        if is_nir_input(args):
            source, dataset, test, calib_pixels = load_nir_inputs(args)
            summary = export_loihi(args, source, target, dataset, test, calib_pixels, energy_table, artifacts)
        else:
            model, ckpt, dataset, test, calib_pixels = load_inputs(args, target)
            if target.name == "onnx":
                summary = export_onnx_target(args, model, ckpt, target, test, artifacts, dataset)
            else:
                summary = export_loihi(args, CheckpointSource(model, ckpt), target, dataset, test, calib_pixels,
                                       energy_table, artifacts)
        summary["seconds"] = round(time.time() - t_start, 1)
        manifest = summary.pop("manifest")
        manifest["artifacts"] = artifacts.hashes()
        manifest["seconds"] = summary["seconds"]
        artifacts.write_json(MANIFEST_FILE, manifest)
        artifacts.commit()
    except BaseException:
        artifacts.discard()
        raise
    print_summary(summary, out)
    if args.dispatch:
        dispatch_export(args, target, out, pixels=summary["parity_pixels"])
    return 0


def dispatch_export(args: argparse.Namespace, target, out: Path, pixels: Optional[np.ndarray] = None) -> int:
    """Stage 8, ``--dispatch``: run the certified export in ``out`` on Loihi 2.

    The certificate is checked first (:func:`deploy.export_dir.read_parity_certificate`: every artifact, its
    hash, parity.json, the graph; exit 5 naming the first that fails); for a folder exported earlier it must
    certify ``args.checkpoint`` (its SHA-256), and the parity images are read again from the dataset the
    manifest names (``pixels``: the images of an export just made). ``--reverify`` then re-derives the graph
    from the checkpoint and re-runs the Lava parity (:func:`deploy.export_dir.reverify_export`). The target
    checks the certificate once more with the images (the integer reference replayed on the folder's graph)
    and runs them."""
    from deploy.export_dir import read_parity_certificate, reverify_export
    from xoresnet.data import load_dataset

    say(f"[8/8] verifying the parity certificate of {out} and dispatching to Loihi 2")
    cert = read_parity_certificate(out)
    recorded = (cert.manifest.get("checkpoint") or cert.manifest.get("nir_input") or {}).get("sha256")
    if file_sha256(args.checkpoint) != recorded:
        what = "NIR graph" if is_nir_input(args) else "checkpoint"
        raise ParityError(f"Loihi 2 dispatch is blocked: {out / MANIFEST_FILE} certifies another {what} (SHA-256 "
                          f"{str(recorded)[:12]}...), not {args.checkpoint}: export it into another folder")
    data = cert.manifest.get("data") or {}
    if pixels is None:
        pixels = load_dataset(str(data.get("dataset")), "test", args.data_dir,
                              limit=cert.parity["samples"]).pixels.numpy()
    if args.reverify:
        from deploy.pipeline import calibration_pixels
        from xoresnet.checkpoint import load_model

        say("      --reverify: deriving the integer graph from the checkpoint again and re-running the Lava parity")
        model, ckpt = load_model(args.checkpoint)
        shape = (model.config.in_channels, model.config.input_size, model.config.input_size)
        calib = (load_pixels_npy(args.calib_data, shape, model.config.input_levels) if args.calib_data else
                 calibration_pixels(str(data.get("dataset")), args.data_dir, int(data.get("calibration_images") or 1)))
        reverify_export(out, cert, model, ckpt, calib, pixels, timeout=args.timeout, progress=not args.no_progress)
    from deploy.dispatch import run_on_hardware

    result = run_on_hardware(target, out, pixels=pixels, timeout=args.timeout, progress=not args.no_progress)
    print(dispatch_line(result, cert.parity["predictions"]["reference"]))
    return 0


def dispatch_line(result, reference_predictions: list[int]) -> str:
    """The summary line of a hardware run (``result``: :class:`~deploy.lava_run.LavaRunResult`)."""
    got = [int(x) for x in result.predictions()]
    same = "equal to" if got == list(reference_predictions) else "DIFFERENT from"
    return (f"dispatch: Loihi 2 ran {result.samples} parity images ({result.steps} steps, {result.seconds:.1f} s): "
            f"predictions {got}, {same} the integer reference's {list(reference_predictions)}")


def first_images(split: str, n: int, total: Optional[int] = None) -> str:
    """``"test split, first 20 of 450 images"`` (the images an export step used)."""
    return f"{split} split, first {n}" + (f" of {total}" if total is not None else "") + " images"


def base_manifest(args, ckpt, target, data: dict[str, Any], nir_input: Optional[dict[str, Any]] = None
                  ) -> dict[str, Any]:
    """The manifest without ``verdict`` and ``artifacts``. ``data``: the images each step used
    (counts and descriptions); the training seed and the export's randomness are added here. A NIR
    input (``ckpt`` None) records ``nir_input`` (its path, SHA-256, dt, readout rule, conventions)
    instead of ``checkpoint``."""
    checkpoint = None if ckpt is None else {"path": str(args.checkpoint), "sha256": ckpt.sha256,
                                            "qat": ckpt.quant is not None, "config": ckpt.config.to_dict()}
    seed = None if ckpt is None else (ckpt.meta.get("options") or {}).get("seed")
    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([PROG] + sys.argv[1:]),
        "target": target.name,
        "checkpoint": checkpoint,
        "data": {**data, "seeds": {"training": seed, "export": None}, "randomness": EXPORT_RANDOMNESS},
        "versions": package_versions(),
    }
    if nir_input is not None:
        manifest["nir_input"] = nir_input
    return manifest


def find_float_parent(ckpt, checkpoint_path: str) -> Optional[Path]:
    """The float checkpoint a QAT checkpoint was fine-tuned from (its meta ``float_parent``): the
    recorded path as given or beside ``checkpoint_path``, if the file there has the recorded SHA-256."""
    parent = ckpt.meta.get("float_parent") or {}
    if ckpt.quant is None or not parent.get("path"):
        return None
    recorded = Path(parent["path"])
    for path in (recorded, Path(checkpoint_path).parent / recorded.name):
        if path.is_file() and file_sha256(path) == parent.get("sha256"):
            return path
    return None


def float_baseline(args, ckpt, eval_set, own_accuracy: float, progress: bool) -> dict[str, Any]:
    """The float accuracy the summary compares the integer accuracy with, on the same images
    (``eval_set``): for a QAT checkpoint whose float parent is found (:func:`find_float_parent`),
    the parent evaluated on them; else this checkpoint's own float model (``own_accuracy``, on them).
    Returns ``{"what": str, "accuracy": float}``."""
    from xoresnet.checkpoint import load_model
    from xoresnet.training import evaluate

    path = find_float_parent(ckpt, args.checkpoint)
    if path is None:
        parent = (ckpt.meta.get("float_parent") or {}).get("path")
        what = "the float model" + (f" (its float parent {parent} was not found with the recorded SHA-256)"
                                    if ckpt.quant is not None and parent else "")
        return {"what": what, "accuracy": own_accuracy}
    model, _ = load_model(path)
    if args.timesteps:
        model.config = model.config.replace(timesteps=args.timesteps)
    return {"what": f"the float model it was fine-tuned from ({ckpt.meta['float_parent']['path']})",
            "accuracy": evaluate(model, eval_set, progress=progress)["accuracy"]}


class CheckpointSource:
    """A checkpoint as the export's source: its float model exported to NIR (stage 2)."""

    kind = "checkpoint"

    def __init__(self, model, ckpt):
        self.model, self.ckpt = model, ckpt

    @cached_property
    def nir_graph(self):
        from xoresnet.nir.export import export_nir

        return export_nir(self.model)

    def float_stage(self, args, eval_set, artifacts: ArtifactDir, progress: bool) -> tuple[dict, dict]:
        """``(baseline, nir_check)``: the float accuracy the summary compares with, and the NIR interpreter,
        run on ``model.nir`` as written, against PyTorch (a mismatch is a bug: exit 4)."""
        from deploy.memory import available_memory, lif_neurons, nir_check_batch
        from xoresnet.nir.check import compare_nir_to_model
        from xoresnet.nir.dialects import dialect_graph
        from xoresnet.nir.export import read_nir, write_nir
        from xoresnet.training import evaluate

        say(f"      float model on {len(eval_set)} test images; NIR interpreter check")
        float_eval = evaluate(self.model, eval_set, progress=progress)
        baseline = float_baseline(args, self.ckpt, eval_set, float_eval["accuracy"], progress)
        write_nir(dialect_graph(self.nir_graph, args.nir_dialect), artifacts.path(NIR_FILE))
        config = self.model.config
        batch = nir_check_batch(config.timesteps, lif_neurons(config), eval_images=len(eval_set),
                                available=available_memory())
        nir_check = compare_nir_to_model(self.model, read_nir(artifacts.files[NIR_FILE]), eval_set.pixels,  # the file
                                         batch_size=batch)
        if not nir_check["passed"]:
            raise UnsupportedModelError(
                f"the NIR interpreter, on model.nir as written, disagrees with PyTorch on "
                f"{nir_check['unexplained_mismatches']} neuron-steps not explained by near-threshold rounding (first: "
                f"{nir_check['first_unexplained']}; a bug: please report it)")
        nir_check["dialect"] = args.nir_dialect
        return baseline, nir_check

    def calibrate(self, pixels):
        from deploy.pipeline import calibrate_checkpoint

        return calibrate_checkpoint(self.model, self.ckpt, pixels, nir_graph=self.nir_graph)

    @property
    def calibration_note(self) -> str:
        return (" (quantization-aware training fixed the scales; the images only measure the calibration report)"
                if self.ckpt.quant else "")

    def report_model(self, graph) -> dict:
        from hw_targets.report import model_section

        return model_section(graph, checkpoint=self.ckpt)

    def manifest(self, args, target, data) -> dict:
        return base_manifest(args, self.ckpt, target, data)


class NirSource:
    """A NIR graph as the export's source (:class:`xoresnet.nir.inputs.NirModel`): no PyTorch model, so the
    float baseline is the NIR interpreter's accuracy."""

    kind = "nir"
    ckpt = None

    def __init__(self, nir_model):
        self.nir_model = nir_model
        self.nir_graph = nir_model.graph

    def float_stage(self, args, eval_set, artifacts: ArtifactDir, progress: bool) -> tuple[dict, dict]:
        from xoresnet.nir.export import write_nir
        from xoresnet.nir.inputs import interpreter_accuracy, nir_summary_name

        say(f"      NIR interpreter (float) on {len(eval_set)} test images: the float baseline")
        info = self.nir_model.imported.info
        accuracy = interpreter_accuracy(self.nir_graph, eval_set.pixels, eval_set.labels, info["input_levels"],
                                        progress=progress)
        write_nir(self.nir_graph, artifacts.path(NIR_FILE))
        check = {"passed": True, "applicable": False,
                 "why": "a NIR input has no PyTorch model: the NIR interpreter is the float reference (docs/formats.md)"}
        return {"what": nir_summary_name(self.nir_model.path), "accuracy": accuracy}, check

    def calibrate(self, pixels):
        from calibration.quantize import calibrate_nir

        return calibrate_nir(self.nir_graph, pixels)

    calibration_note = ""

    def report_model(self, graph) -> dict:
        from hw_targets.report import model_section

        section = model_section(graph, name=Path(self.nir_model.path).stem)
        section.update(checkpoint=self.nir_model.path, sha256=self.nir_model.sha256)
        return section

    def manifest(self, args, target, data) -> dict:
        return base_manifest(args, None, target, data, nir_input=self.nir_model.record())


def load_nir_inputs(args: argparse.Namespace):
    """Stage 1 for a NIR input: ``(NirSource, dataset name, test split, --calib-data pixels or None)``.

    The graph is read and imported before any data (refusals first, exit 3 or 4); the dataset's images
    must fit its Input, and the estimated memory this machine (:func:`deploy.memory.check_export_memory`)."""
    from deploy.memory import check_export_memory
    from xoresnet.nir.frontend import ImportOptions
    from xoresnet.nir.inputs import load_nir_model, spiking_neurons
    from xoresnet.data import DATASETS, load_dataset

    say(f"[1/8] reading the NIR graph {args.checkpoint}")
    if args.dataset not in DATASETS:
        raise UsageError(f"--dataset {args.dataset}: unknown; choose from {', '.join(DATASETS)}")
    info = DATASETS[args.dataset]
    shape = (info.in_channels, info.input_size, info.input_size)
    options = ImportOptions(dt=args.dt, timesteps=args.timesteps, input_levels=args.input_levels, readout=args.readout,
                            convention=args.nir_convention, decay_tolerance=args.decay_tolerance,
                            snap_decays=args.snap_decays, image_shape=shape)
    nir_model = load_nir_model(args.checkpoint, options, info.input_levels)
    imported = nir_model.imported
    for note in imported.notes:
        say(f"      {note}")
    levels = imported.info["input_levels"]
    calib_pixels = load_pixels_npy(args.calib_data, shape, min(levels, info.input_levels)) if args.calib_data else None
    check_export_memory(imported.info["timesteps"], spiking_neurons(nir_model.graph),
                        eval_images=args.eval_samples or 1 << 62, parity_images=args.parity_samples,
                        calib_images=len(calib_pixels) if calib_pixels is not None else args.calib_samples)
    test = load_dataset(args.dataset, "test", args.data_dir)
    return NirSource(nir_model), args.dataset, test, calib_pixels


def export_loihi(args, source, target, dataset, test, calib_pixels, energy_table, artifacts: ArtifactDir) -> dict:
    """Stages 2-7 for the loihi2 and lava-sim targets; ``source``: :class:`CheckpointSource` or
    :class:`NirSource`; ``test``: the whole test split; ``calib_pixels``: ``--calib-data`` (or None: the
    training split)."""
    from calibration.fan_in import split_layers
    from calibration.integer_graph import save_integer_graph
    from deploy.lava_graph import describe_lava_network, population_parts
    from deploy.pipeline import analyse, architecture_check, calibration_pixels, lava_parity, map_to_cores, report_of
    from hw_targets.design_rules import require_design_rules
    from hw_targets.report import REPORT_HTML, REPORT_JSON, write_report
    from xoresnet.data import IntImageDataset

    progress = not args.no_progress
    n_eval = len(test) if args.eval_samples == 0 else min(args.eval_samples, len(test))
    eval_set = IntImageDataset(test.pixels[:n_eval], test.labels[:n_eval], test.info)
    say(("[2/8] NIR export; design rules" if source.kind == "checkpoint" else "[2/8] design rules")
        + f" for {target.name} on the architecture (before calibration)")
    nir_graph = source.nir_graph
    arch = architecture_check(nir_graph, target, system=args.system)
    pk = arch.drc.packing
    say(f"      {pk.num_cores} neuro-cores on {pk.chips} chip(s) at 8-bit weights ({pk.bound_ratio:.2f}x the lower "
        f"bound, {pk.rule_ratio:.2f}x the tile rule's minimum of {pk.rule_minimum_cores}), smallest system "
        f"{pk.smallest_system or 'none'} [{arch.seconds:.1f} s]"
        + ("" if arch.passed else "; fits only if calibration stores fewer bits per weight: decided after it"))
    baseline, nir_check = source.float_stage(args, eval_set, artifacts, progress)
    if calib_pixels is None:
        calib_pixels = calibration_pixels(dataset, args.data_dir, args.calib_samples)
        calib_what = first_images("train", len(calib_pixels))
    else:
        calib_what = f"{args.calib_data} ({len(calib_pixels)} images)"
    quant = source.ckpt is not None and source.ckpt.quant
    say("[3/8] calibrating to Loihi 2 integers"
        + (" (scales from quantization-aware training)" if quant else f" on {len(calib_pixels)} images"))
    calibration = source.calibrate(calib_pixels)
    mapping = map_to_cores(calibration.graph, target, system=args.system)  # scheduled, fan-in splits, core plan
    graph = mapping.graph
    save_integer_graph(graph, artifacts.path(GRAPH_FILE))
    artifacts.write_json(CALIBRATION_FILE, {"spec": calibration.spec.to_dict(), "report": calibration.report})
    artifacts.write_json(LAVA_GRAPH_FILE, describe_lava_network(graph))
    say(f"[4/8] design rules and packing for {target.name} with the calibrated weights")
    require_design_rules(mapping.drc)
    say(f"[5/8] integer reference on {n_eval} test images (accuracy, spike statistics, energy)")
    analysis = analyse(graph, mapping, eval_set.pixels, eval_set.labels, float_accuracy=baseline["accuracy"],
                       energy_table=energy_table, progress=progress)
    drc, stats, energy = analysis.drc, analysis.stats, analysis.energy
    parity_pixels = test.pixels[: args.parity_samples]
    say(f"[6/8] Lava fixed-point simulation of {len(parity_pixels)} test images vs the integer reference "
        "(Loihi timing, every neuron and step)")
    run = lava_parity(graph, parity_pixels, timeout=args.timeout, progress=progress)
    parity, lava, parity_dict = run.report, run.lava, run.record
    if not parity.passed:
        failure = artifacts.write_failure(parity_dict)
        raise ParityError(f"{parity.summary()}; details in {failure}; nothing was written to {artifacts.out} and "
                          "dispatch is blocked")
    artifacts.write_json(PARITY_FILE, parity_dict)
    say("[7/8] writing the report and the manifest")
    report = report_of(graph, target, analysis, model=source.report_model(graph),
                       dataset={"name": dataset, "split": "test"}, parity=run, architecture=arch)
    report["nir_check"] = nir_check
    report["readout"] = readout_record(graph)
    report["decay_grid"] = (graph.meta.get("source") or {}).get("decay_grid")
    if source.kind == "nir":
        report["nir_input"] = source.nir_model.record()
    json_path, html_path = write_report(artifacts.tmp, report)
    artifacts.files[REPORT_JSON], artifacts.files[REPORT_HTML] = json_path, html_path
    manifest = source.manifest(args, target, {
        "dataset": dataset, "test_split_images": len(test),
        "calibration": calib_what + source.calibration_note,
        "calibration_images": len(calib_pixels),
        "evaluation": first_images("test", n_eval, len(test)), "evaluation_images": n_eval,
        "parity": first_images("test", len(parity_pixels), len(test)), "parity_images": len(parity_pixels),
        "parity_pixels_sha256": pixels_sha256(parity_pixels), "calibration_pixels_sha256": pixels_sha256(calib_pixels)})
    if source.kind == "nir":
        manifest["nir_input"]["decay_grid"] = report["decay_grid"]
    manifest["readout"] = report["readout"]
    coverage = {k: v for k, v in parity.coverage.items() if k != "spikes_by_population"}  # all of it: parity.json
    manifest["verdict"] = {
        "parity": "passed", "parity_samples": parity.samples, "neuron_steps_compared": parity.neuron_steps_compared,
        "coverage": coverage, "lava_process_models": lava.process_models,
        "core_plan": {"cut_populations": graph.core_plan.cut_populations if graph.core_plan else 0,
                      "lava_population_processes": sum(len(parts) for parts in population_parts(graph).values()),
                      "identities_as_depthwise_conv": len(graph.core_plan.depthwise) if graph.core_plan else 0,
                      "fan_in_splits": sorted(split_layers(graph))},
        "predictions_equal": parity.predictions_equal,
        "nir_check": "passed" if nir_check.get("applicable", True) else "not applicable (NIR input)",
        "design_rules": "passed", "dispatch_allowed": True,
        "lava_runtimes": lava.slices,
        "statement": "Lava's Loihi2SimCfg('fixed_pt') run of integer_graph.h5, with the process models listed in "
                     "lava_process_models, equals the xoresnet integer reference bit for bit on every population, "
                     "neuron and timestep of the parity images"
                     + ("" if len(lava.slices) == 1 else
                        f"; run as {len(lava.slices)} Lava runtimes (lava_runtimes), each slice of the graph fed the "
                        "reference's values of the populations it reads, so that by induction over the slices the "
                        "whole graph equals the reference"),
    }
    return {
        "manifest": manifest, "target": target.name,
        "parity": parity.summary() + ("" if len(lava.slices) == 1 else f" (Lava in {len(lava.slices)} slices, each fed "
                                      "the reference's values at its inputs)"),
        "integer_accuracy": stats["accuracy"]["integer"], "baseline": baseline,
        "eval_samples": n_eval, "energy_uj": energy["loihi"]["total_pj"] / 1e6,
        "cores": drc.packing.num_cores, "chips": drc.packing.chips, "system": drc.packing.smallest_system,
        "latency_steps": stats["latency"]["latency_steps"], "report": REPORT_HTML,
        "parity_pixels": parity_pixels.numpy(), "reference_predictions": parity.predictions["reference"],
    }


def readout_record(graph) -> dict[str, Any]:
    """The readout rule of ``graph`` for the report and manifest (:mod:`calibration.readout`)."""
    from calibration.readout import decoding_of

    d = dict(decoding_of(graph))
    source = graph.meta.get("source") or {}
    rule = {"spike-count": "the argmax of the last population's spike counts over the timesteps",
            "membrane": "the argmax of the readout membrane averaged over the timesteps"
                        + (" (an LI layer: its leak weighs the steps)" if d.get("li_leak") else
                           " (the readout synapses' output, no leak)")}[d["rule"]]
    return {**d, "meaning": rule, "chosen": source.get("readout_rule_reason", "inferred from the last layer")}


def export_onnx_target(args, model, ckpt, target, test, artifacts: ArtifactDir, dataset: str) -> dict:
    """The onnx target: ``model.onnx`` checked with onnxruntime on the first ``8 x --parity-samples``
    test images (``test``: the whole test split)."""
    from hw_targets.onnx import CHECK_FILE, MODEL_FILE, export_onnx_artifacts

    pixels = test.pixels[: args.parity_samples * 8]
    say(f"[2/3] exporting the float model per timestep to ONNX and checking it with onnxruntime on {len(pixels)} "
        "test images")
    check = export_onnx_artifacts(model, artifacts.tmp, pixels, model.config.timesteps)
    for name in (MODEL_FILE, CHECK_FILE):
        artifacts.files[name] = artifacts.tmp / name
    if not check["passed"]:
        raise UnsupportedModelError(f"the ONNX model disagrees with PyTorch: {check.get('summary', check)}")
    manifest = base_manifest(args, ckpt, target, {
        "dataset": dataset, "test_split_images": len(test),
        "onnx_check": first_images("test", len(pixels), len(test)), "onnx_check_images": len(pixels)})
    manifest["verdict"] = {"onnx_check": "passed", "dispatch_allowed": False}
    return {"manifest": manifest, "target": target.name, "onnx": check}


def print_summary(s: dict, out: Path) -> None:
    """The result lines on stdout; both accuracies are on the same ``eval_samples`` test images."""
    if s["target"] == "onnx":
        c = s["onnx"]
        print(f"ONNX export checked against PyTorch with onnxruntime: {c.get('summary', 'passed')}")
    else:
        print(f"verdict: {s['parity']}")
        ia, fa, what = s["integer_accuracy"], s["baseline"]["accuracy"], s["baseline"]["what"]
        drop = 100 * (fa - ia)
        print(f"accuracy on {s['eval_samples']} test images: Loihi integer {100 * ia:.2f}%, {what} {100 * fa:.2f}% "
              f"({abs(drop):.2f} pp {'below' if drop >= 0 else 'above'})")
        print(f"Loihi 2: {s['cores']} neuro-cores on {s['chips']} chip(s) ({s['system'] or 'no known system'}), "
              f"latency {s['latency_steps']} timesteps"
              + (f", ~{s['energy_uj']:.2f} uJ/inference (Loihi-1-calibrated estimate)" if s["energy_uj"] else ""))
        print(f"report: {out / s['report']}")
    what = "manifest.json, onnx_check.json" if s["target"] == "onnx" else "manifest.json is the parity certificate"
    print(f"artifacts: {out}/ ({what}) [{s['seconds']} s]")


def export_main(argv: Optional[list[str]] = None) -> None:
    run_cli(PROG, lambda: export(export_parser().parse_args(argv)))


if __name__ == "__main__":  # pragma: no cover
    export_main()
