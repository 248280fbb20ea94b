"""The one definition of what crosses the training -> models/ -> service boundary (the README's
Conventions and Shipped models sections): the canvas, the tasks, each task's tensors, the metadata
keys an ONNX file carries, and the `config.pbtxt` the exporter writes. Standard library only, so
`training`, `service` and `client` can all import it without pulling each other's dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass

# Re-exported: what every Triton-layout repository shares, which the tasks below build on.
from coordconv.triton import BACKEND as BACKEND
from coordconv.triton import MODEL_NAME_RE as MODEL_NAME_RE
from coordconv.triton import PLATFORM as PLATFORM
from coordconv.triton import Tensor as Tensor

CANVAS = 64  # pixels per side; coordinates are in [0, CANVAS - 1]
SQUARE = 9  # a square covers centre +- SQUARE // 2, clipped to the canvas
TASKS = ("pixel", "render", "locate")
BATCH_DIM = "batch"  # the symbolic first axis of every input and output

# ONNX metadata_props keys
META_TASK = "coordconv.task"
META_ARCH = "coordconv.arch"
META_CANVAS = "coordconv.canvas"
META_SPLIT = "coordconv.split"
META_METRICS = "coordconv.metrics"
META_TRAINED_AT = "coordconv.trained_at"


@dataclass(frozen=True)
class Signature:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    # Outputs a model of this task may add after the required ones (the locate confidence).
    optional_outputs: tuple[Tensor, ...] = ()

    @property
    def input(self) -> Tensor:
        return self.inputs[0]

    @property
    def output(self) -> Tensor:
        """The primary output, the one the product API answers with."""
        return self.outputs[0]


COORDS = Tensor("coords", (2,))
IMAGE = Tensor("image", (CANVAS, CANVAS))
SIGNATURES: dict[str, Signature] = {
    "pixel": Signature((COORDS,), (Tensor("heatmap", (CANVAS, CANVAS)),)),
    "render": Signature((COORDS,), (IMAGE,)),
    "locate": Signature((IMAGE,), (COORDS,), (Tensor("confidence", ()),)),
}


def config_pbtxt(
    name: str,
    task: str,
    max_batch_size: int = 256,
    max_queue_delay_us: int = 500,
    outputs: tuple[Tensor, ...] | None = None,
) -> str:
    """Triton's `config.pbtxt` (text format of its ModelConfig) for a model of `task`. Dims leave
    the batch axis out. The service parses and verifies it against the graph."""
    sig = SIGNATURES[task]

    def tensors(values: tuple[Tensor, ...]) -> str:
        items = []
        for t in values:
            dims = ", ".join(str(d) for d in t.dims) if t.dims else "1"
            reshape = "\n    reshape: { shape: [ ] }" if not t.dims else ""
            items.append(
                f'  {{\n    name: "{t.name}"\n    data_type: TYPE_{t.datatype}\n'
                f"    dims: [ {dims} ]{reshape}\n  }}"
            )
        return ",\n".join(items)

    chosen = outputs or sig.outputs
    # Rendering repeats: batch jobs send the same points again, and version 2 rounds every point
    # to one of 4,096 centres. The cache only exists where the server is given a size.
    cache = "response_cache { enable: true }\n" if task == "render" else ""
    threshold = (
        'parameters: { key: "coordconv.ok_threshold" value: { string_value: "0.5" } }\n'
        if any(t.name == "confidence" for t in chosen)
        else ""
    )
    return (
        f'name: "{name}"\n'
        f'platform: "{PLATFORM}"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n{tensors(sig.inputs)}\n]\n"
        f"output [\n{tensors(chosen)}\n]\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
        f"{cache}"
        "version_policy: { latest: { num_versions: 2 } }\n"
        "instance_group [ { count: 1, kind: KIND_AUTO } ]\n"
        f'parameters: {{ key: "{META_TASK}" value: {{ string_value: "{task}" }} }}\n'
        f"{threshold}"
    )
