"""Weights read back from an ONNX file that `training.export` wrote: used by training (to start
from an exported model, `TrainConfig.init_onnx`) and by the exporter (to re-export a published
model with another head). Its own module so that `train` and `export` need not import each
other: `export` builds on `train` (it exports trained runs), never the other way round."""

from __future__ import annotations

from pathlib import Path

import torch


def weights_from_onnx(path: str | Path) -> dict[str, torch.Tensor]:
    """The PyTorch state dict of a model `training.export` exported (its initializers carry the
    parameter names, under `model.`)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    return {
        i.name.removeprefix("model."): torch.from_numpy(numpy_helper.to_array(i).copy())
        for i in proto.graph.initializer
        if i.name.startswith("model.")
    }
