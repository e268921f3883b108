"""Make lava-nc 0.10.0 usable on Python >= 3.11 and numpy >= 2.4, without touching site-packages.

lava-nc 0.10.0 is archived upstream and declares Python < 3.11. Two things break on our stack,
and each is fixed here at the narrowest point:

1. **Import** (Python >= 3.11). ``lava/magma/compiler/var_model.py`` declares dataclass fields
   whose default is a ``ByteEncoder()`` instance. Python 3.11 rejects a dataclass default whose
   class is unhashable ("mutable default ... use default_factory"), so ``import lava.proc...``
   fails. We load that one module through our own loader, which compiles its unchanged source
   with ``ByteEncoder`` declared ``@dataclass(unsafe_hash=True)``. That is exactly the Python 3.10
   behaviour (one shared default instance); nothing is written to disk, the bytecode cache of
   site-packages is neither read nor written for that module.
2. **Run** (numpy >= 2.4). ``ReshapePort`` transforms call ``np.reshape(..., newshape=...)``;
   numpy 2.4 removed the ``newshape`` keyword, so any reshaped connection raises inside a Lava
   worker process and the whole run hangs. We replace the two transform factories with ones
   that pass the shape positionally (valid on every numpy version).

Call :func:`lava_ready` before the first ``import lava...``; it is idempotent and cheap.
"""

from __future__ import annotations

import ast
import functools
import importlib.abc
import importlib.machinery
import sys

import numpy as np

_VAR_MODEL = "lava.magma.compiler.var_model"


class _VarModelLoader(importlib.machinery.SourceFileLoader):
    """Compiles ``var_model.py`` with ``ByteEncoder`` made hashable; never touches ``__pycache__``."""

    def get_code(self, fullname):  # noqa: D102 - importlib protocol
        tree = ast.parse(self.get_data(self.path), self.path)
        patched = False
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == "ByteEncoder":
                node.decorator_list = [
                    ast.Call(
                        func=ast.Name("dataclass", ast.Load()),
                        args=[],
                        keywords=[ast.keyword("unsafe_hash", ast.Constant(True))],
                    )
                ]
                patched = True
        if not patched:
            raise ImportError(f"{self.path}: class ByteEncoder not found; is this lava-nc 0.10.0?")
        return compile(ast.fix_missing_locations(tree), self.path, "exec", dont_inherit=True)


class _VarModelFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):  # noqa: D102 - importlib protocol
        if fullname != _VAR_MODEL:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None:
            return None
        spec.loader = _VarModelLoader(fullname, spec.origin)
        return spec


def _reshape(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.reshape(data, shape)


def _reshape_fwd(self):
    return functools.partial(_reshape, shape=self.shape)


def _reshape_bwd(self):
    return functools.partial(_reshape, shape=self.old_shape)


_ready = False


def lava_ready() -> None:
    """Install both fixes (idempotent). Must run before ``lava.magma.compiler.var_model`` is imported."""
    global _ready
    if _ready:
        return
    if sys.version_info >= (3, 11) and _VAR_MODEL not in sys.modules:
        if not any(isinstance(f, _VarModelFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _VarModelFinder())
    from lava.magma.core.process.ports import ports

    ports.ReshapePort.get_transform_func_fwd = _reshape_fwd
    ports.ReshapePort.get_transform_func_bwd = _reshape_bwd
    _ready = True
