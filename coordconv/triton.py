"""What any model repository in Triton's layout shares, whatever its models do: model names (also
directory names), a tensor's description (FP32, dims without the batch axis) and the platform and
backend names of an ONNX model on onnxruntime. Standard library only.

The CoordConv contract (coordconv/contract.py) builds its tasks on these; the service's generic
model layer (service/models) uses these alone, and is given the contract's rules from above.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
# Model names: also directory names in the repository, so nothing that could walk out of it.
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Tensor:
    """A tensor of a model's signature: its name, FP32 data, and its dims without the batch."""

    name: str
    dims: tuple[int, ...]
    datatype: str = "FP32"  # the Open Inference Protocol's name; TYPE_FP32 in config.pbtxt
