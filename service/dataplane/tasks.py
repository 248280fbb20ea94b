"""The CoordConv contract as the task rules the generic model layer is given
(service/models/rules.py): a graph's task from its metadata (`coordconv.task`), its config's
tensors against the task's signature (coordconv/contract.py), the valid values of each input
(pixels in [0, 63] for coordinates, [0, 1] for images: warm-up data and request checks), what
/v1/models says of the metadata, and the confidence at which a located point is `ok`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from coordconv.contract import (
    CANVAS,
    COORDS,
    IMAGE,
    META_ARCH,
    META_METRICS,
    META_SPLIT,
    META_TASK,
    META_TRAINED_AT,
    SIGNATURES,
    TASKS,
    Tensor,
)
from service.dataplane import codecs
from service.errors import ModelError
from service.models.config import ModelConfig, tensors_of
from service.models.rules import InputRange

OK_THRESHOLD = "coordconv.ok_threshold"  # config parameter: confidence at which a point is ok
DEFAULT_OK_THRESHOLD = 0.5


class CoordConvRules:
    def task(self, metadata: Mapping[str, str], where: str) -> str:
        task = metadata.get(META_TASK)
        if task not in TASKS:
            raise ModelError(
                f"{where}: metadata {META_TASK} is {task!r}; expected one of {', '.join(TASKS)}"
            )
        return task

    def check(self, task: str, config: ModelConfig, where: str) -> list[Tensor]:
        inputs, outputs = tensors_of(config, "input"), tensors_of(config, "output")
        sig = SIGNATURES[task]
        allowed = sig.outputs + sig.optional_outputs
        for kind, tensors, want in (("input", inputs, sig.inputs), ("output", outputs, allowed)):
            contract = {t.name: t for t in want}
            for t in tensors:
                spec = contract.get(t.name)
                if spec is None or spec.dims != t.dims:
                    expected = ", ".join(f"{w.name} {list(w.dims)}" for w in want)
                    raise ModelError(
                        f"{where}: {kind} {t.name!r} {list(t.dims)} is not what a {task!r} model "
                        f"has ({expected})"
                    )
        missing = [t.name for t in sig.outputs if t.name not in {o.name for o in outputs}]
        if missing:
            raise ModelError(f"{where}: a {task!r} model must have the output(s) {missing}")
        declared = config.parameters.get(META_TASK)
        if declared is not None and declared.string_value and declared.string_value != task:
            raise ModelError(
                f"{where}: the graph does {task!r} but config.pbtxt declares "
                f"{META_TASK} {declared.string_value!r}"
            )
        order = [t.name for t in allowed]
        return sorted(outputs, key=lambda t: order.index(t.name))

    def input_range(self, name: str) -> InputRange:
        if name == IMAGE.name:
            return InputRange(0.0, 1.0, 0.0)
        return InputRange(0.0, float(CANVAS - 1), CANVAS / 2)

    def check_values(self, name: str, x: np.ndarray, label: str) -> None:
        if name == IMAGE.name:
            codecs.check_images(x, label)
        elif name == COORDS.name:
            codecs.check_coords_array(x, label)

    def describe(self, metadata: Mapping[str, str]) -> dict[str, Any]:
        try:
            metrics = json.loads(metadata.get(META_METRICS, "{}"))
        except ValueError:
            metrics = {}
        return {
            "arch": metadata.get(META_ARCH, "unknown"),
            "split": metadata.get(META_SPLIT),
            "metrics": metrics if isinstance(metrics, dict) else {},
            "trained_at": metadata.get(META_TRAINED_AT),
        }


def ok_threshold(config: ModelConfig | None) -> float:
    """The confidence at and above which a located point is `ok` (config parameter
    `coordconv.ok_threshold`, default 0.5)."""
    p = None if config is None else config.parameters.get(OK_THRESHOLD)
    try:
        return float(p.string_value) if p is not None else DEFAULT_OK_THRESHOLD
    except ValueError:
        return DEFAULT_OK_THRESHOLD
