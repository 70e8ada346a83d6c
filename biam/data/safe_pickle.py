"""A restricted unpickler for the released label-embedding and name pickles.

A pickle can name any importable callable and call it while loading, so ``pickle.load`` on a
downloaded file runs whatever code the file asks for. The released files only need numpy array
reconstruction plus plain containers (lists, dicts, strings, numbers), which pickle builds with
its own opcodes without importing anything. :func:`safe_load` admits exactly those globals and
refuses every other one with an error naming the file and the global.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any, BinaryIO, Union

import numpy as np

__all__ = ["UnsafePickleError", "RestrictedUnpickler", "safe_load", "safe_loads"]


class UnsafePickleError(pickle.UnpicklingError):
    """Raised when a pickle names a global outside the allow-list (nothing of it has run)."""


def _numpy_reconstruct():
    # numpy 2 moved numpy.core to numpy._core; old pickles name the former, new ones the latter.
    try:
        from numpy._core import multiarray  # type: ignore[attr-defined]
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    return multiarray


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` as protocol-2 numpy pickles use it (bytes as latin-1 text).

    Only text codecs are allowed, so the call can do nothing but turn a string into bytes.
    """
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise UnsafePickleError(f"_codecs.encode called with a refused codec {encoding!r}")
    return text.encode(encoding, errors)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """Our own copy-free rebuild of a numeric array from pickled bytes (protocol 5)."""
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise UnsafePickleError("refused to rebuild an object array from raw bytes")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _allowed() -> dict:
    ma = _numpy_reconstruct()
    table = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "_reconstruct")] = ma._reconstruct
        table[(module, "scalar")] = ma.scalar
    for module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "ndarray")] = np.ndarray
        table[(module, "dtype")] = np.dtype
    # numpy writes dtype reconstruction through numpy.dtype; some versions name numeric dtypes
    # by their classes (e.g. numpy.dtypes.Float32DType), which construct nothing but a dtype.
    for name in ("Float16DType", "Float32DType", "Float64DType", "Int8DType", "Int16DType",
                 "Int32DType", "Int64DType", "UInt8DType", "BoolDType", "StrDType", "BytesDType",
                 "ObjectDType"):
        cls = getattr(getattr(np, "dtypes", None), name, None)
        if cls is not None:
            table[("numpy.dtypes", name)] = cls
    table[("_codecs", "encode")] = _latin1_encode
    # Protocol 5 pickles rebuild arrays from raw bytes (numeric dtypes only; numpy refuses objects).
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(module, "_frombuffer")] = _frombuffer
    # Containers and scalars that protocol 0/1 pickles may name explicitly.
    for name, obj in (("list", list), ("dict", dict), ("tuple", tuple), ("set", set),
                      ("frozenset", frozenset), ("str", str), ("bytes", bytes), ("int", int),
                      ("float", float), ("bool", bool), ("complex", complex)):
        table[("builtins", name)] = obj
        table[("__builtin__", name)] = obj
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only numpy array pieces and builtins.

    ``source`` names the file in error messages.
    """

    _table: dict = {}

    def __init__(self, file: BinaryIO, source: str = "<pickle>"):
        super().__init__(file, encoding="latin1")
        self.source = source
        if not RestrictedUnpickler._table:
            RestrictedUnpickler._table = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        obj = self._table.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"{self.source}: refused to load global '{module}.{name}' "
                "(only numpy arrays, lists, dicts, strings and numbers are allowed)"
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refused persistent id {pid!r}")


def safe_load(path_or_file: Union[str, os.PathLike, BinaryIO]) -> Any:
    """Load a pickle that may only hold numpy arrays and plain containers.

    Input: a path or a binary file object. Output: the unpickled object.
    Raises :class:`UnsafePickleError` naming the file and the refused global, ``FileNotFoundError``
    for a missing file, and ``pickle.UnpicklingError`` (with the file name) for a corrupt one.
    """
    if hasattr(path_or_file, "read"):
        source = str(getattr(path_or_file, "name", "<file object>"))
        return _load(path_or_file, source)  # type: ignore[arg-type]
    path = os.fspath(path_or_file)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"pickle file not found: {path}") from None
    with fh:
        return _load(fh, path)


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Like :func:`safe_load` for a bytes object."""
    return _load(io.BytesIO(data), source)


def _load(fh: BinaryIO, source: str) -> Any:
    try:
        return RestrictedUnpickler(fh, source).load()
    except UnsafePickleError as err:
        if str(err).startswith(source):
            raise
        raise UnsafePickleError(f"{source}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise pickle.UnpicklingError(f"{source}: not a readable pickle ({type(err).__name__}: {err})") from err
