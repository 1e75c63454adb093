"""Plain data between the grader and a submission's worker process: never a pickled object.

A message is one JSON header followed by raw byte blobs (tensor and array data). The header may hold
``None``, booleans, numbers, strings, lists and these tagged objects::

    {"__tensor__": blob, "dtype": "float32", "shape": [2, 3], "grad": false}   a torch tensor (CPU, dense)
    {"__ndarray__": blob, "dtype": "float64", "shape": [4]}                    a numpy array (no object dtype)
    {"__tuple__": [...]}  {"__dict__": [[key, value], ...]}                    tuples, dicts
    {"__generator__": tensor}                                                  a torch.Generator's state
    {"__npscalar__": "float64", "value": 1.5}  {"__dtype__": "float32"}       numpy scalars, torch dtypes
    {"__handle__": 3, "type": "module.Class", "fields": {...}}                 an object the worker keeps
    {"__ref__": 3}                                                             that object, sent back

Decoding checks everything it reads (sizes, dtypes, nesting), because one side is a submission's code.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np
import torch

MAGIC = b"CLW1"
MAX_MESSAGE_BYTES = 256 * 2**20
MAX_HEADER_BYTES = 16 * 2**20  # the JSON part: its Python objects take many times its size
MAX_DEPTH = 32
_TORCH_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128,
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)}
_NUMPY_DTYPES = {"float16", "float32", "float64", "complex64", "complex128", "uint8", "int8", "int16", "int32",
                 "int64", "uint16", "uint32", "uint64", "bool"}


class WireError(Exception):
    """A message that is not plain data, is too large, or is malformed."""


def encode(value: Any, blobs: list[bytes], keep: Callable[[Any], dict] | None = None, depth: int = 0) -> Any:
    """``value`` as a JSON-able header, appending raw data to ``blobs``.

    ``keep(obj) -> tag`` stores an object that is not plain data and returns its ``__handle__`` tag (the
    worker's side); without it such an object raises :class:`WireError`.
    """
    if depth > MAX_DEPTH:
        raise WireError(f"data nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)) and type(value) in (int, float):
        return value
    if isinstance(value, torch.Tensor) and value.device.type != "meta":
        data = value.detach().cpu()
        if data.layout != torch.strided:
            data = data.to_dense()
        dtype = str(data.dtype).removeprefix("torch.")
        if dtype in _TORCH_DTYPES:
            blobs.append(data.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
            return {"__tensor__": len(blobs) - 1, "dtype": dtype, "shape": list(data.shape),
                    "grad": bool(value.requires_grad)}
    if isinstance(value, np.ndarray) and value.dtype.name in _NUMPY_DTYPES:
        blobs.append(np.ascontiguousarray(value).tobytes())
        return {"__ndarray__": len(blobs) - 1, "dtype": value.dtype.name, "shape": list(value.shape)}
    if isinstance(value, np.generic) and value.dtype.name in _NUMPY_DTYPES:
        return {"__npscalar__": value.dtype.name, "value": encode(value.item(), blobs, None, depth + 1)}
    if isinstance(value, torch.dtype) and str(value).removeprefix("torch.") in _TORCH_DTYPES:
        return {"__dtype__": str(value).removeprefix("torch.")}
    if isinstance(value, torch.Generator):
        return {"__generator__": encode(value.get_state(), blobs, None, depth + 1)}
    if type(value) in (list, tuple):
        items = [encode(v, blobs, keep, depth + 1) for v in value]
        return items if type(value) is list else {"__tuple__": items}
    if type(value) is dict:
        return {"__dict__": [[encode(k, blobs, keep, depth + 1), encode(v, blobs, keep, depth + 1)]
                             for k, v in value.items()]}
    reference = getattr(value, "wire_reference", None)
    if isinstance(reference, int) and not isinstance(reference, bool):
        return {"__ref__": reference}
    if keep is not None:
        return keep(value)
    raise WireError(f"a {type(value).__name__} cannot be sent to a submission's worker as plain data")


def decode(header: Any, blobs: list[bytes], resolve: Callable[[dict], Any], depth: int = 0) -> Any:
    """The inverse of :func:`encode`; ``resolve(tag)`` turns ``__handle__`` / ``__ref__`` tags into objects."""
    if depth > MAX_DEPTH:
        raise WireError(f"data nested more than {MAX_DEPTH} levels deep")
    if header is None or isinstance(header, (bool, int, float, str)):
        return header
    if isinstance(header, list):
        return [decode(v, blobs, resolve, depth + 1) for v in header]
    if not isinstance(header, dict) or len(header) == 0:
        raise WireError(f"unexpected {type(header).__name__} in a message")
    if "__tensor__" in header:
        dtype = _TORCH_DTYPES.get(header.get("dtype"))
        shape = _shape(header.get("shape"))
        blob = _blob(blobs, header["__tensor__"])
        if dtype is None:
            raise WireError(f"unsupported tensor dtype {header.get('dtype')!r}")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if len(blob) != count * torch.empty((), dtype=dtype).element_size():
            raise WireError("a tensor's data does not match its shape and dtype")
        tensor = (torch.frombuffer(bytearray(blob), dtype=dtype).reshape(shape) if count
                  else torch.empty(shape, dtype=dtype))
        if header.get("grad") is True and (tensor.is_floating_point() or tensor.is_complex()):
            tensor.requires_grad_(True)
        return tensor
    if "__ndarray__" in header:
        name, shape = header.get("dtype"), _shape(header.get("shape"))
        if name not in _NUMPY_DTYPES:
            raise WireError(f"unsupported array dtype {name!r}")
        blob = _blob(blobs, header["__ndarray__"])
        if len(blob) != int(np.prod(shape, dtype=np.int64)) * np.dtype(name).itemsize:
            raise WireError("an array's data does not match its shape and dtype")
        return np.frombuffer(blob, dtype=name).reshape(shape).copy()
    if "__npscalar__" in header:
        if header["__npscalar__"] not in _NUMPY_DTYPES:
            raise WireError(f"unsupported numpy scalar {header['__npscalar__']!r}")
        return np.dtype(header["__npscalar__"]).type(decode(header.get("value"), blobs, resolve, depth + 1))
    if "__dtype__" in header:
        if header["__dtype__"] not in _TORCH_DTYPES:
            raise WireError(f"unsupported dtype {header['__dtype__']!r}")
        return _TORCH_DTYPES[header["__dtype__"]]
    if "__generator__" in header:
        state = decode(header["__generator__"], blobs, resolve, depth + 1)
        generator = torch.Generator()
        try:
            generator.set_state(state)
        except (TypeError, RuntimeError) as exc:
            raise WireError(f"not a generator state: {exc}") from None
        return generator
    if "__tuple__" in header:
        items = header["__tuple__"]
        if not isinstance(items, list):
            raise WireError("a tuple must hold a list")
        return tuple(decode(v, blobs, resolve, depth + 1) for v in items)
    if "__dict__" in header:
        pairs = header["__dict__"]
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise WireError("a dict must hold [key, value] pairs")
        out = {}
        for key, value in pairs:
            key = decode(key, blobs, resolve, depth + 1)
            try:
                out[key] = decode(value, blobs, resolve, depth + 1)
            except TypeError:
                raise WireError("a dict key must be hashable") from None
        return out
    if "__handle__" in header or "__ref__" in header:
        return resolve(header)
    raise WireError(f"unknown object in a message: keys {sorted(header)[:5]}")


def _shape(shape: Any) -> list[int]:
    if not isinstance(shape, list) or len(shape) > 16 or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s for s in shape):
        raise WireError(f"bad shape {shape!r:.80}")
    if int(np.prod(shape, dtype=np.float64)) > MAX_MESSAGE_BYTES:
        raise WireError(f"shape {shape} is too large")
    return shape


def _blob(blobs: list[bytes], index: Any) -> bytes:
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(blobs):
        raise WireError(f"bad data reference {index!r:.40}")
    return blobs[index]


def send(stream: BinaryIO, message: dict, keep: Callable[[Any], dict] | None = None) -> None:
    """Encode ``message`` (see :func:`encode`) and write it to ``stream`` as one frame."""
    blobs: list[bytes] = []
    header = json.dumps(encode(message, blobs, keep), allow_nan=True).encode()
    parts = [MAGIC, struct.pack(">II", len(header), len(blobs)), header]
    for blob in blobs:
        parts += [struct.pack(">Q", len(blob)), blob]
    if sum(len(p) for p in parts) > MAX_MESSAGE_BYTES:
        raise WireError(f"a message of more than {MAX_MESSAGE_BYTES // 2**20} MiB")
    stream.write(b"".join(parts))
    stream.flush()


def receive(stream: BinaryIO, resolve: Callable[[dict], Any]) -> Any:
    """Read one frame from ``stream`` and decode it; ``EOFError`` when the other side has gone."""
    prefix = _read(stream, 12)
    if prefix[:4] != MAGIC:
        raise WireError("not a message (bad magic bytes)")
    header_size, count = struct.unpack(">II", prefix[4:])
    if header_size > MAX_HEADER_BYTES or count > 100_000:
        raise WireError("message too large")
    total = header_size
    try:
        header = json.loads(_read(stream, header_size))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WireError(f"a malformed message header ({type(exc).__name__})") from None
    blobs = []
    for _ in range(count):
        (size,) = struct.unpack(">Q", _read(stream, 8))
        total += size
        if total > MAX_MESSAGE_BYTES:
            raise WireError(f"a message of more than {MAX_MESSAGE_BYTES // 2**20} MiB")
        blobs.append(_read(stream, size))
    try:
        return decode(header, blobs, resolve)
    except RecursionError:
        raise WireError("data nested too deeply") from None


def _read(stream: BinaryIO, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("the other side closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
