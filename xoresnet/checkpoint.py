"""Checkpoints: plain tensors plus JSON, loadable with ``torch.load(weights_only=True)``.

A checkpoint is untrusted input. It is a ``torch.save``'d dict::

    {"format": "xoresnet-checkpoint", "version": 1,
     "config": <NetworkConfig as JSON text>,
     "state_dict": {name: tensor},
     "meta": <training metadata as JSON text>,
     "quant": <quantization spec as JSON text>        (optional: quantization-aware trained)
     "train_state": {"epoch": int, "optimizer": <optimizer state_dict>, "rng": uint8 tensor}  (optional: resume)}

:func:`load_checkpoint` only ever calls ``torch.load(..., weights_only=True)``: a file carrying a
pickled object (code that would run on load) is refused, never executed. It reads nothing unbounded:
the file, its zip archive and the tensors each tensor declares are checked against bounds and against
the config (first loaded onto the meta device, which reads no tensor data), and every archive entry's
CRC-32, before any tensor is read (see :func:`load_checkpoint`). Every other failure
(missing, truncated, corrupt, another kind of file, an entry or a field that code reads of the
wrong kind, wrong tensors, NaN/Inf weights) raises a one-line
:class:`~xoresnet.errors.CheckpointError` or :class:`~xoresnet.errors.ConfigFormatError` (exit
3); a well-formed config of an unsupported architecture raises
:class:`~xoresnet.errors.ConfigError` (exit 4).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Optional

import torch

from .config import NetworkConfig, has_json_kind, json_kind_name, shown
from .errors import CheckpointError, ConfigError, UnsupportedModelError
from .files import GiB, MiB, atomic_write, open_regular, size_text
from .network import XOResNet, build_network

FORMAT = "xoresnet-checkpoint"
VERSION = 1

# Bounds checked before a checkpoint's tensors are read (:func:`load_checkpoint`). XOResNet-101 at width
# 1.0 with its AdamW state is about 0.5 GB; a checkpoint's pickle (JSON entries, tensor records) is tens of kB.
MAX_CHECKPOINT_BYTES = 4 * GiB
MAX_PICKLE_BYTES = 64 * MiB
MAX_ARCHIVE_ENTRIES = 100_000
MAX_PAYLOAD_ITEMS = 1_000_000
#: Tensors besides the weights (a resumable checkpoint's optimizer state: AdamW keeps two moments per
#: weight; the random-generator state): at most this many times the weights' bytes, plus the slack.
OTHER_TENSORS_FACTOR = 3
OTHER_TENSORS_SLACK = 1 * MiB

# The fields of the JSON entries that code reads, with their JSON kinds (see config.has_json_kind),
# and those that must be present. Other fields of 'meta' are information for people.
META_FIELDS = {"dataset": str | None, "history": list[dict], "test_accuracy": float | None,
               "test_samples": int | None, "float_parent": dict | None}
FLOAT_PARENT_FIELDS = {"path": str, "sha256": str | None, "test_accuracy": float | None, "test_samples": int | None}
QUANT_FIELDS = {"version": int, "vth_mant": dict[str, int], "meta": dict}


@dataclass
class Checkpoint:
    config: NetworkConfig
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]
    quant: Optional[dict[str, Any]] = None
    train_state: Optional[dict[str, Any]] = None
    path: Optional[Path] = None
    sha256: Optional[str] = None


def save_checkpoint(
    path: str | os.PathLike,
    model: XOResNet,
    meta: dict[str, Any],
    *,
    quant: Optional[dict[str, Any]] = None,
    train_state: Optional[dict[str, Any]] = None,
) -> None:
    """Atomically write ``model`` (config + tensors) and JSON metadata to ``path``.

    A model with a NaN/Inf tensor (a diverged training run) is not written: ``path`` keeps what it
    held and :class:`~xoresnet.errors.UnsupportedModelError` (exit code 4) names the tensor."""
    state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    bad = first_non_finite(state_dict)
    if bad:
        raise UnsupportedModelError(f"not writing {path}: tensor '{bad[0]}' has {bad[1]} NaN/Inf value(s) (training "
                                    "diverged: lower --lr)")
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_json(),
        "state_dict": state_dict,
        "meta": json.dumps(meta, sort_keys=True),
    }
    if quant is not None:
        payload["quant"] = json.dumps(quant, sort_keys=True)
    if train_state is not None:
        payload["train_state"] = train_state
    buf = io.BytesIO()
    torch.save(payload, buf)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buf.getvalue())


def first_non_finite(state_dict: dict[str, torch.Tensor]) -> Optional[tuple[str, int]]:
    """``(name, count)`` of the first floating-point tensor holding NaN/Inf values, or None."""
    for name, tensor in state_dict.items():
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                return name, bad
    return None


def _json_field(payload: dict, key: str, path: Path) -> Any:
    try:
        return json.loads(payload[key])
    except (TypeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: entry '{key}' is not JSON text") from None
    except RecursionError:
        raise CheckpointError(f"{path}: entry '{key}' is JSON nested too deeply for a checkpoint entry") from None


def _check_fields(obj: Any, fields: dict[str, Any], what: str, *, required: tuple[str, ...] = ()) -> None:
    """Raise :class:`CheckpointError` unless ``obj`` is a JSON object holding every ``required`` key
    and, for each key of ``fields`` it holds, a value of that JSON kind. ``what`` names ``obj``."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} must be a JSON object, got {shown(obj)}")
    for key in required:
        if key not in obj:
            raise CheckpointError(f"{what} lacks the field '{key}'")
    for key, hint in fields.items():
        if key in obj and not has_json_kind(obj[key], hint):
            raise CheckpointError(f"{what} field '{key}' must be {json_kind_name(hint)}, got {shown(obj[key])}")


def _check_train_state(state: Any, path: Path) -> None:
    """The resume state: ``epoch`` (int >= 0), ``optimizer`` (a state_dict), ``rng`` (uint8 tensor)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'train_state' must be a dict, got {type(state).__name__}")
    epoch, optimizer, rng = state.get("epoch"), state.get("optimizer"), state.get("rng")
    if not has_json_kind(epoch, int) or epoch < 0:
        raise CheckpointError(f"{path}: train_state 'epoch' must be an integer >= 0, got {shown(epoch)}")
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list)):
        raise CheckpointError(f"{path}: train_state 'optimizer' is not an optimizer state_dict")
    if not (isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 and rng.dim() == 1):
        raise CheckpointError(f"{path}: train_state 'rng' is not a random generator state (a 1-d uint8 tensor)")


def _torch_load(f: BinaryIO, path: Path, device: str) -> Any:
    """``torch.load(f, weights_only=True)`` with every failure as one line. ``device="meta"`` reads only
    the pickle: each tensor comes back with its declared dtype and shape, and no data is read."""
    f.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(f, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"global:?\s+([\w.]+)", str(e), flags=re.IGNORECASE)
        if found:
            raise CheckpointError(
                f"{path} was refused: it carries a pickled Python object ({found.group(1)}) that could run code when "
                "loaded; xoresnet checkpoints hold only tensors and JSON"
            ) from None
        opcode = re.search(r"Unsupported operand \d+", str(e))
        raise CheckpointError(f"{path} is corrupt or not a PyTorch checkpoint (the weights-only loader refused it"
                              + (f": {opcode.group(0)})" if opcode else ")")) from None
    except RecursionError:
        raise CheckpointError(f"{path}: its pickle is nested too deeply for a checkpoint") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError, TypeError,
            AttributeError, AssertionError) as e:
        first = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else ""
        raise CheckpointError(f"{path} is corrupt or truncated ({type(e).__name__}: {first[:120]})") from None


def _open_archive(f: BinaryIO, path: Path) -> zipfile.ZipFile:
    """The zip archive ``torch.save`` wrote, its directory checked before anything in it is read: at most
    :data:`MAX_ARCHIVE_ENTRIES` entries, no name twice (two readers could pick different ones), one
    pickle of at most :data:`MAX_PICKLE_BYTES`, no entry larger than the file limit, and the pickle's CRC."""
    try:
        archive = zipfile.ZipFile(f)
        entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated, or not a PyTorch checkpoint: not a readable zip archive "
                              f"({str(e).strip()[:80]}); a raw pickle or torch's legacy format is refused, never "
                              "unpickled") from None
    if len(entries) > MAX_ARCHIVE_ENTRIES:
        raise CheckpointError(f"{path}: its archive has {len(entries)} entries; a checkpoint has at most "
                              f"{MAX_ARCHIVE_ENTRIES}")
    names = [e.filename for e in entries]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise CheckpointError(f"{path}: its archive holds the entry {twice!r} twice (corrupt or crafted)")
    pickles = [e for e in entries if e.filename.endswith("/data.pkl") or e.filename == "data.pkl"]
    if len(pickles) != 1:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (its archive has {len(pickles)} data.pkl entries, "
                              "torch.save writes one)")
    for e in entries:
        if e.file_size > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"{path}: archive entry {e.filename!r} declares {size_text(e.file_size)}, more than "
                                  f"a checkpoint may hold ({size_text(MAX_CHECKPOINT_BYTES)})")
    if pickles[0].file_size > MAX_PICKLE_BYTES:
        raise CheckpointError(f"{path}: its pickle declares {size_text(pickles[0].file_size)}; a checkpoint's has at "
                              f"most {size_text(MAX_PICKLE_BYTES)}")
    _check_crc(archive, pickles[0], path)
    return archive


def _check_crc(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, path: Path) -> None:
    """Read ``entry`` in 1 MiB chunks (at most its declared size); its CRC-32 must match the archive's."""
    try:
        with archive.open(entry) as member:
            while member.read(1 << 20):
                pass
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError) as e:
        raise CheckpointError(f"{path} is corrupt: archive entry {entry.filename!r} fails its check "
                              f"({str(e).strip()[:80] or type(e).__name__})") from None


def _declared_tensors(payload: Any) -> list[tuple[str, torch.Tensor]]:
    """Every tensor in ``payload`` (dicts, lists and tuples walked without recursion), with where it is."""
    found, stack, seen = [], [("", payload)], 0
    while stack:
        where, value = stack.pop()
        seen += 1
        if seen > MAX_PAYLOAD_ITEMS:
            raise CheckpointError(f"a checkpoint holds at most {MAX_PAYLOAD_ITEMS} values")
        if isinstance(value, torch.Tensor):
            found.append((where, value))
        elif isinstance(value, dict):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
    return found


def expected_tensors(config: NetworkConfig) -> dict[str, torch.Tensor]:
    """The state_dict the network of ``config`` has, as meta tensors (nothing allocated)."""
    with torch.device("meta"):
        return build_network(config).state_dict()


def check_state_dict(state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Any) -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` has exactly the names, shapes and dtypes of
    ``expected`` (:func:`expected_tensors`)."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        what = f"missing '{missing[0]}'" if missing else f"unexpected '{unexpected[0]}'"
        raise CheckpointError(
            f"{path}: tensors do not match its config ({len(missing)} missing, {len(unexpected)} unexpected; {what})"
        )
    for name, tensor in state_dict.items():
        need = expected[name]
        if tensor.shape != need.shape or tensor.dtype != need.dtype:
            raise CheckpointError(f"{path}: tensor '{name}' is {tuple(tensor.shape)} {tensor.dtype}, "
                                  f"its config needs {tuple(need.shape)} {need.dtype}")


def _check_declared_tensors(payload: dict, config: NetworkConfig, path: Path) -> None:
    """Before any tensor data is read: every tensor is dense, the state_dict's are exactly those of the
    config, and all the tensors together (optimizer state and RNG state included) declare at most
    :data:`OTHER_TENSORS_FACTOR` + 1 times the state_dict's bytes, plus :data:`OTHER_TENSORS_SLACK`."""
    tensors = _declared_tensors(payload)
    for where, t in tensors:
        if t.layout != torch.strided:
            raise CheckpointError(f"{path}: tensor '{where}' is {str(t.layout).replace('torch.', '')}; "
                                  "xoresnet checkpoints hold dense tensors only")
    check_state_dict(payload["state_dict"], expected_tensors(config), path)
    weights = sum(t.numel() * t.element_size() for t in payload["state_dict"].values())
    storages: dict[Any, int] = {}
    for _, t in tensors:
        storage = t.untyped_storage()
        storages[getattr(storage, "_checkpoint_offset", None) or id(storage)] = storage.nbytes()
    declared, allowed = sum(storages.values()), (OTHER_TENSORS_FACTOR + 1) * weights + OTHER_TENSORS_SLACK
    if declared > allowed:
        raise CheckpointError(f"{path}: its tensors declare {size_text(declared)}, but a checkpoint of its config "
                              f"holds at most {size_text(allowed)} (weights {size_text(weights)} plus optimizer and "
                              "random-generator state)")


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load and validate a checkpoint (weights-only). Raises a one-line error on any problem.

    Checked in this order, each before the next reads more: the file (a regular file of at most
    :data:`MAX_CHECKPOINT_BYTES`), the zip archive's directory and its pickle's CRC
    (:func:`_open_archive`), the pickle loaded onto the meta device (no tensor data read: format,
    version, entries, the config within its ranges, every JSON field), every tensor's declared size
    against the config and the total against a bound (:func:`_check_declared_tensors`), the CRC of every
    archive entry, and only then the tensors themselves (NaN/Inf refused)."""
    path = Path(path)
    with open_regular(path, what=f"checkpoint {path}", limit=MAX_CHECKPOINT_BYTES, error=CheckpointError) as f:
        archive = _open_archive(f, path)
        declared = _torch_load(f, path, "meta")
        config, meta, quant = _check_payload(declared, path)
        _check_declared_tensors(declared, config, path)
        for entry in archive.infolist():
            _check_crc(archive, entry, path)
        payload = _torch_load(f, path, "cpu")
        f.seek(0)
        sha256 = hashlib.file_digest(f, "sha256").hexdigest()
    state_dict = payload["state_dict"]
    bad = first_non_finite(state_dict)
    if bad:
        raise CheckpointError(f"{path}: tensor '{bad[0]}' has {bad[1]} NaN/Inf value(s)")
    return Checkpoint(
        config=config,
        state_dict=state_dict,
        meta=meta,
        quant=quant,
        train_state=payload.get("train_state"),
        path=path,
        sha256=sha256,
    )


def _check_payload(payload: Any, path: Path) -> tuple[NetworkConfig, dict[str, Any], Optional[dict[str, Any]]]:
    """The checkpoint's structure and JSON entries (tensors may be meta tensors): ``(config, meta, quant)``."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        kind = "a state_dict or other dict" if isinstance(payload, dict) else f"a {type(payload).__name__}"
        raise CheckpointError(f"{path} is not an xoresnet checkpoint (it holds {kind}, without format '{FORMAT}')")
    version = payload.get("version")
    if not has_json_kind(version, int) or not 1 <= version <= VERSION:
        raise CheckpointError(f"{path} has checkpoint version {version!r}; this xoresnet reads versions 1 to {VERSION}")
    for key in ("config", "state_dict", "meta"):
        if key not in payload:
            raise CheckpointError(f"{path} lacks the '{key}' entry")
    try:
        config = NetworkConfig.from_dict(_json_field(payload, "config", path))
    except ConfigError as e:  # keeps its exit code: 3 malformed, 4 unsupported
        raise type(e)(f"{path}: {e}") from None
    state_dict = payload["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                   for k, v in state_dict.items()):
        raise CheckpointError(f"{path}: 'state_dict' must map names to tensors")
    meta = _json_field(payload, "meta", path)
    _check_fields(meta, META_FIELDS, f"{path}: 'meta'")
    if meta.get("float_parent") is not None:
        _check_fields(meta["float_parent"], FLOAT_PARENT_FIELDS, f"{path}: meta 'float_parent'", required=("path",))
    quant = _json_field(payload, "quant", path) if "quant" in payload else None
    if quant is not None:
        _check_fields(quant, QUANT_FIELDS, f"{path}: 'quant'", required=("version", "vth_mant"))
    if payload.get("train_state") is not None:
        _check_train_state(payload["train_state"], path)
    return config, meta, quant


def model_from_checkpoint(ckpt: Checkpoint) -> XOResNet:
    """Build the network of ``ckpt`` and load its tensors (strict), in eval mode.

    The tensors are compared with the config's on the meta device first, so a config whose
    network would not fit in memory is refused for its tensors instead of being allocated.
    """
    check_state_dict(ckpt.state_dict, expected_tensors(ckpt.config), ckpt.path)
    model = build_network(ckpt.config)
    model.load_state_dict(ckpt.state_dict)
    return model.eval()


def load_model(path: str | os.PathLike) -> tuple[XOResNet, Checkpoint]:
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt), ckpt
