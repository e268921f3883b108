"""Checkpoints: plain tensors plus JSON, loadable with ``torch.load(weights_only=True)``.

A checkpoint is untrusted input. It is a ``torch.save``'d dict::

    {"format": "xoresnet-checkpoint", "version": 1,
     "config": <NetworkConfig as JSON text>,
     "state_dict": {name: tensor},
     "meta": <training metadata as JSON text>,
     "quant": <quantization spec as JSON text>        (optional: quantization-aware trained)
     "train_state": {"epoch": int, "optimizer": <optimizer state_dict>, "rng": uint8 tensor}  (optional: resume)}

:func:`load_checkpoint` only ever calls ``torch.load(..., weights_only=True)``: a file carrying a
pickled object (code that would run on load) is refused, never executed. Every other failure
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
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from .config import NetworkConfig, has_json_kind, json_kind_name, shown
from .errors import CheckpointError, ConfigError, UnsupportedModelError
from .network import XOResNet, build_network

FORMAT = "xoresnet-checkpoint"
VERSION = 1

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


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates the file private; follow the umask like open() does
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    atomic_write_bytes(path, buf.getvalue())


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


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load and validate a checkpoint (weights-only). Raises a one-line error on any problem."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
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
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError) as e:
        first = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else ""
        raise CheckpointError(f"{path} is corrupt or truncated ({type(e).__name__}: {first[:120]})") from None
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
    bad = first_non_finite(state_dict)
    if bad:
        raise CheckpointError(f"{path}: tensor '{bad[0]}' has {bad[1]} NaN/Inf value(s)")
    meta = _json_field(payload, "meta", path)
    _check_fields(meta, META_FIELDS, f"{path}: 'meta'")
    if meta.get("float_parent") is not None:
        _check_fields(meta["float_parent"], FLOAT_PARENT_FIELDS, f"{path}: meta 'float_parent'", required=("path",))
    quant = _json_field(payload, "quant", path) if "quant" in payload else None
    if quant is not None:
        _check_fields(quant, QUANT_FIELDS, f"{path}: 'quant'", required=("version", "vth_mant"))
    if payload.get("train_state") is not None:
        _check_train_state(payload["train_state"], path)
    return Checkpoint(
        config=config,
        state_dict=state_dict,
        meta=meta,
        quant=quant,
        train_state=payload.get("train_state"),
        path=path,
        sha256=file_sha256(path),
    )


def model_from_checkpoint(ckpt: Checkpoint) -> XOResNet:
    """Build the network of ``ckpt`` and load its tensors (strict), in eval mode.

    The tensors are compared with the config's on the meta device first, so a config whose
    network would not fit in memory is refused for its tensors instead of being allocated.
    """
    with torch.device("meta"):
        expected = build_network(ckpt.config).state_dict()
    missing = sorted(set(expected) - set(ckpt.state_dict))
    unexpected = sorted(set(ckpt.state_dict) - set(expected))
    if missing or unexpected:
        what = f"missing '{missing[0]}'" if missing else f"unexpected '{unexpected[0]}'"
        raise CheckpointError(
            f"{ckpt.path}: tensors do not match its config ({len(missing)} missing, {len(unexpected)} unexpected; {what})"
        )
    for name, tensor in ckpt.state_dict.items():
        need = expected[name]
        if tensor.shape != need.shape or tensor.dtype != need.dtype:
            raise CheckpointError(f"{ckpt.path}: tensor '{name}' is {tuple(tensor.shape)} {tensor.dtype}, "
                                  f"its config needs {tuple(need.shape)} {need.dtype}")
    model = build_network(ckpt.config)
    model.load_state_dict(ckpt.state_dict)
    return model.eval()


def load_model(path: str | os.PathLike) -> tuple[XOResNet, Checkpoint]:
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt), ckpt
