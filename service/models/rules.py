"""What a served model must be beyond Triton's rules: its task's contract, given to the generic
model layer from above (the product's rules are service/dataplane/tasks.py), so that nothing in
service/models knows what a task is. Without rules (`GENERIC`) any model that Triton's rules
accept is served, its task unnamed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from coordconv.triton import Tensor
from service.models.config import ModelConfig, tensors_of


@dataclass(frozen=True)
class InputRange:
    """An input's valid values: random warm-up data is drawn from [low, high]; the default
    warm-up sends `typical`."""

    low: float
    high: float
    typical: float


class TaskRules(Protocol):
    def task(self, metadata: Mapping[str, str], where: str) -> str:
        """The task a graph does, from its metadata; ModelError with one line if none."""
        ...

    def check(self, task: str, config: ModelConfig, where: str) -> list[Tensor]:
        """A verified, effective config's tensors against the task's signature (and what the
        config declares of the task); its outputs in the task's order. ModelError, one line."""
        ...

    def input_range(self, name: str) -> InputRange: ...

    def check_values(self, name: str, x: np.ndarray, label: str) -> None:
        """A request's values of model input `name` (BadRequest with one line)."""
        ...

    def describe(self, metadata: Mapping[str, str]) -> dict[str, Any]:
        """What a version's /v1/models entry says of its graph's metadata."""
        ...


class Generic:
    """No task rules: Triton's alone."""

    def task(self, metadata: Mapping[str, str], where: str) -> str:
        return ""

    def check(self, task: str, config: ModelConfig, where: str) -> list[Tensor]:
        return tensors_of(config, "output")

    def input_range(self, name: str) -> InputRange:
        return InputRange(0.0, 1.0, 0.0)

    def check_values(self, name: str, x: np.ndarray, label: str) -> None:
        return None

    def describe(self, metadata: Mapping[str, str]) -> dict[str, Any]:
        return {}


GENERIC: TaskRules = Generic()
