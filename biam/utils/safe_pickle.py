"""A restricted unpickler for the released label-embedding and name pickles.

A pickle can name any importable callable and call it while loading, so ``pickle.load`` on a
downloaded file runs whatever code the file asks for. The released files only need numpy array
reconstruction plus plain containers (lists, dicts, strings, numbers), which pickle builds with
its own opcodes without importing anything. :func:`safe_load` admits exactly those globals and
refuses every other one with an error naming the file and the global.

Admitted callables are also bounded: what they may allocate is limited by the size of the pickle
itself (``bytes(10**9)``, a 30-byte pickle, is refused, as is an empty array "reconstructed" with
a billion elements), so a small hostile file cannot exhaust memory either.
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


class _NdarrayClass:
    """Stands for ``numpy.ndarray`` inside a pickle: numpy pickles pass the class to
    ``_reconstruct`` as an argument; calling it (an uninitialised array of any shape) is refused."""

    def __call__(self, *args, **kwargs):
        raise UnsafePickleError("refused a direct call of numpy.ndarray (only _reconstruct may build arrays)")


_NDARRAY = _NdarrayClass()


def _nbytes(shape: Any, dtype: Any) -> int:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise UnsafePickleError(f"array shape {shape!r}: expected non-negative ints")
    n = np.dtype(dtype).itemsize
    for d in shape:
        n *= d
    return n


def _bounded_reconstruct(limit: int):
    """``numpy.core.multiarray._reconstruct`` for plain ndarrays of at most ``limit`` bytes.

    numpy pickles call it with shape (0,) and fill the array from the pickled bytes afterwards
    (numpy checks those against the shape), so the limit (the pickle's size) costs nothing real.
    """
    reconstruct = _numpy_reconstruct()._reconstruct

    def call(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype is not _NDARRAY and subtype is not np.ndarray:
            raise UnsafePickleError(f"_reconstruct of {subtype!r}: only numpy.ndarray is allowed")
        size = _nbytes(shape, b"b" if isinstance(dtype, bytes) else dtype)
        if size > limit:
            raise UnsafePickleError(f"_reconstruct of an array of {size} bytes, more than the pickle's size "
                                    f"allows ({limit} bytes)")
        return reconstruct(np.ndarray, shape, dtype)

    return call


def _bounded_bytes(*args: Any) -> bytes:
    """``bytes`` as protocol 0-2 pickles use it (``bytes()``, ``bytes(text, encoding)``); never
    ``bytes(n)``, which allocates n zero bytes from a 30-byte pickle."""
    if args and not isinstance(args[0], (str, bytes, list, tuple)):
        raise UnsafePickleError(f"bytes() called with a {type(args[0]).__name__} argument (refused: it allocates)")
    return bytes(*args)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """Our own copy-free rebuild of a numeric array from pickled bytes (protocol 5)."""
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise UnsafePickleError("refused to rebuild an object array from raw bytes")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _allowed(limit: int) -> dict:
    """The admitted globals. ``limit``: most bytes one reconstructed array may take."""
    ma = _numpy_reconstruct()
    table = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "_reconstruct")] = _bounded_reconstruct(limit)
        # scalar(dtype, data) copies exactly itemsize bytes of data (numpy refuses shorter data).
        table[(module, "scalar")] = ma.scalar
    for module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "ndarray")] = _NDARRAY
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
    # Containers and scalars that protocol 0/1 pickles may name explicitly; each builds from
    # data already in the pickle (bytes only from text or a list, never from a count).
    for name, obj in (("list", list), ("dict", dict), ("tuple", tuple), ("set", set),
                      ("frozenset", frozenset), ("str", str), ("bytes", _bounded_bytes), ("int", int),
                      ("float", float), ("bool", bool), ("complex", complex)):
        table[("builtins", name)] = obj
        table[("__builtin__", name)] = obj
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only numpy array pieces and builtins.

    ``source`` names the file in error messages; ``size`` is the pickle's length in bytes, which
    bounds what one admitted call may allocate (default: 64 MiB).
    """

    def __init__(self, file: BinaryIO, source: str = "<pickle>", size: int = 64 << 20):
        super().__init__(file, encoding="latin1")
        self.source = source
        self._table = _allowed(max(int(size), 1 << 16))

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
        return _load(path_or_file, source, _remaining(path_or_file))  # type: ignore[arg-type]
    path = os.fspath(path_or_file)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"pickle file not found: {path}") from None
    with fh:
        return _load(fh, path, os.fstat(fh.fileno()).st_size)


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Like :func:`safe_load` for a bytes object."""
    return _load(io.BytesIO(data), source, len(data))


def _remaining(fh: BinaryIO) -> int:
    """Bytes left in a seekable file object (64 MiB when it cannot tell)."""
    try:
        here = fh.tell()
        end = fh.seek(0, os.SEEK_END)
        fh.seek(here)
        return end - here
    except (OSError, AttributeError, ValueError):
        return 64 << 20


def _load(fh: BinaryIO, source: str, size: int) -> Any:
    try:
        return RestrictedUnpickler(fh, source, size).load()
    except UnsafePickleError as err:
        if str(err).startswith(source):
            raise
        raise UnsafePickleError(f"{source}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise pickle.UnpicklingError(f"{source}: not a readable pickle ({type(err).__name__}: {err})") from err
