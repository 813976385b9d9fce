"""An infinite, exactly resumable batch iterator; all randomness from an explicit
``np.random.Generator`` whose state round-trips through JSON."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from train.data.images import to_model_range

_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")


def _state_to_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _state_to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.integer):
        return int(value)
    return value


def _state_from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
        return {k: _state_from_json(v) for k, v in value.items()}
    return value


def rng_state_json(rng: np.random.Generator) -> dict[str, Any]:
    """JSON-serialisable state of a NumPy Generator (Python ints keep 128-bit state exact)."""
    return _state_to_json(rng.bit_generator.state)


def rng_from_state_json(state: Mapping[str, Any]) -> np.random.Generator:
    name = state.get("bit_generator")
    if name not in _BIT_GENERATORS:
        raise ValueError(f"unknown bit generator {name!r} in saved RNG state; expected one of {_BIT_GENERATORS}")
    bg = getattr(np.random, name)()
    bg.state = _state_from_json(dict(state))
    return np.random.Generator(bg)


def data_fingerprint(images: np.ndarray) -> str:
    """MD5 of shape, dtype and bytes: a resumed run must see exactly the same data."""
    h = hashlib.md5(usedforsecurity=False)
    h.update(f"{images.shape}|{images.dtype.str}|".encode())
    h.update(np.ascontiguousarray(images).data)
    return h.hexdigest()


class BatchIterator:
    """Infinite iterator of preprocessed float32 batches over uint8 NHWC ``data``: a permutation
    per epoch (incomplete tail dropped); one Generator drives permutations, flips and noise."""

    def __init__(
        self, data: np.ndarray, batch_size: int, *, seed: int | np.random.SeedSequence | None = None,
        rng: np.random.Generator | None = None, flip: bool = True, dequantize: bool = True,
    ) -> None:
        if data.dtype != np.uint8 or data.ndim != 4:
            raise ValueError(f"data must be uint8 NHWC, got {data.dtype} with shape {data.shape}")
        if not 1 <= batch_size <= data.shape[0]:
            raise ValueError(f"batch_size must be in [1, {data.shape[0]}] (dataset size), got {batch_size}")
        if rng is not None and seed is not None:
            raise ValueError("pass either seed or rng, not both")
        self.data = data
        self.batch_size = int(batch_size)
        self.flip = flip
        self.dequantize = dequantize
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        self._fingerprint: str | None = None
        self.epoch = 0
        self.position = 0
        self.perm = self.rng.permutation(data.shape[0])

    @property
    def num_examples(self) -> int:
        return int(self.data.shape[0])

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = data_fingerprint(self.data)
        return self._fingerprint

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def next_indices(self) -> np.ndarray:
        if self.position + self.batch_size > self.num_examples:
            self.epoch += 1
            self.position = 0
            self.perm = self.rng.permutation(self.num_examples)
        idx = self.perm[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return idx

    def __next__(self) -> np.ndarray:
        idx = self.next_indices()
        return to_model_range(self.data[idx], self.rng, flip=self.flip, dequantize=self.dequantize)

    def export_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, JSON metadata) that :meth:`import_state` turns back into this exact state."""
        meta = {"epoch": self.epoch, "position": self.position, "batch_size": self.batch_size,
                "num_examples": self.num_examples, "flip": self.flip, "dequantize": self.dequantize,
                "data_fingerprint": self.fingerprint, "rng": rng_state_json(self.rng)}
        return {"perm": self.perm.astype(np.int64)}, meta

    def import_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        for name, mine in (("num_examples", self.num_examples), ("batch_size", self.batch_size),
                           ("flip", self.flip), ("dequantize", self.dequantize),
                           ("data_fingerprint", self.fingerprint)):
            if meta.get(name) != mine:
                raise ValueError(f"data iterator state field {name!r} is {meta.get(name)!r} in the checkpoint "
                                 f"but {mine!r} in this run; resuming would not reproduce the same batches")
        perm = np.asarray(arrays["perm"])
        if perm.shape != (self.num_examples,) or not np.array_equal(np.sort(perm), np.arange(self.num_examples)):
            raise ValueError(f"data iterator 'perm' is not a permutation of {self.num_examples} indices")
        position = int(meta["position"])
        if not 0 <= position <= self.num_examples:
            raise ValueError(f"data iterator 'position' {position} is outside [0, {self.num_examples}]")
        self.rng = rng_from_state_json(meta["rng"])
        self.perm = perm.astype(np.int64)
        self.position = position
        self.epoch = int(meta["epoch"])
