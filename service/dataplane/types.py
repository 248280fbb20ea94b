"""The data plane's request and response types: plain data, no web framework objects, so the HTTP
routes (/v1 and /v2) and the gRPC servicer are thin adapters that build these, call the
`DataPlane` and encode what it returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service.models.config import ModelConfig


@dataclass
class InputTensor:
    """One input as a client sent it: exactly one of `array` (already decoded, as the product
    API and NPY bodies give), `raw` (little-endian bytes: V2 binary data, gRPC
    raw_input_contents) or `data` (JSON numbers, flat or nested; gRPC typed contents)."""

    name: str
    datatype: str
    shape: Any  # checked by the data plane: a list of ints
    data: Any = None
    raw: bytes | memoryview | None = None
    array: np.ndarray | None = None
    label: str | None = None  # what error messages call it ("images" on /v1)


@dataclass
class InferRequest:
    model: str
    inputs: list[InputTensor]
    version: str | None = None  # None: the highest ready version
    id: str | None = None
    outputs: list[str] | None = None  # names asked for; None: every output
    tasks: tuple[str, ...] | None = None  # the product API's routes serve some tasks only
    # The most items one request may carry: the model's max_batch_size (V2), or the
    # product API's MAX_ITEMS_PER_REQUEST, which the batcher splits over calls.
    max_items: int | None = None


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    model_sha256: str
    task: str
    outputs: list[OutputTensor]
    id: str | None = None
    config: ModelConfig | None = None  # the effective config of the version that answered

    def output(self, name: str) -> np.ndarray:
        for o in self.outputs:
            if o.name == name:
                return o.data
        raise KeyError(name)
