"""Checkpoints: plain tensors plus JSON, loadable with ``torch.load(weights_only=True)``.

A checkpoint is untrusted input. It is a ``torch.save``'d dict::

    {"format": "xoresnet-checkpoint", "version": 1,
     "config": <NetworkConfig as JSON text>,
     "state_dict": {name: tensor},
     "meta": <training metadata as JSON text>,
     "quant": <quantization spec as JSON text>        (optional: quantization-aware trained)
     "train_state": {"epoch": int, "optimizer": ..., "scheduler": ..., "rng": tensor}  (optional: resume)}

:func:`load_checkpoint` only ever calls ``torch.load(..., weights_only=True)``: a file carrying a
pickled object (code that would run on load) is refused, never executed. Every other failure
(missing, truncated, corrupt, another kind of file, wrong tensors, NaN/Inf weights, an
unsupported architecture) raises a one-line :class:`~xoresnet.errors.XoresnetError`.
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

from .config import NetworkConfig
from .errors import CheckpointError
from .network import XOResNet, build_network

FORMAT = "xoresnet-checkpoint"
VERSION = 1


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
    """Atomically write ``model`` (config + tensors) and JSON metadata to ``path``."""
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_json(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": json.dumps(meta, sort_keys=True),
    }
    if quant is not None:
        payload["quant"] = json.dumps(quant, sort_keys=True)
    if train_state is not None:
        payload["train_state"] = train_state
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def _json_field(payload: dict, key: str, path: Path) -> Any:
    try:
        return json.loads(payload[key])
    except (TypeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: entry '{key}' is not JSON text") from None


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
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {version!r}; this xoresnet reads versions <= {VERSION}")
    for key in ("config", "state_dict", "meta"):
        if key not in payload:
            raise CheckpointError(f"{path} lacks the '{key}' entry")
    config = NetworkConfig.from_dict(_json_field(payload, "config", path))
    state_dict = payload["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: 'state_dict' must map names to tensors")
    for name, tensor in state_dict.items():
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise CheckpointError(f"{path}: tensor '{name}' has {bad} NaN/Inf value(s)")
    return Checkpoint(
        config=config,
        state_dict=state_dict,
        meta=_json_field(payload, "meta", path),
        quant=_json_field(payload, "quant", path) if "quant" in payload else None,
        train_state=payload.get("train_state"),
        path=path,
        sha256=file_sha256(path),
    )


def model_from_checkpoint(ckpt: Checkpoint) -> XOResNet:
    """Build the network of ``ckpt`` and load its tensors (strict), in eval mode."""
    model = build_network(ckpt.config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ckpt.state_dict))
    unexpected = sorted(set(ckpt.state_dict) - set(expected))
    if missing or unexpected:
        what = f"missing '{missing[0]}'" if missing else f"unexpected '{unexpected[0]}'"
        raise CheckpointError(
            f"{ckpt.path}: tensors do not match its config ({len(missing)} missing, {len(unexpected)} unexpected; {what})"
        )
    for name, tensor in ckpt.state_dict.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{ckpt.path}: tensor '{name}' has shape {tuple(tensor.shape)}, config needs {tuple(expected[name].shape)}"
            )
    model.load_state_dict(ckpt.state_dict)
    return model.eval()


def load_model(path: str | os.PathLike) -> tuple[XOResNet, Checkpoint]:
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt), ckpt
