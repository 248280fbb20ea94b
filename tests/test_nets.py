"""Networks: the paper's parameter counts, shapes, outputs in pixels and probabilities."""

from __future__ import annotations

import pytest
import torch

from training.nets import build, count_parameters


@pytest.mark.parametrize(
    ("task", "arch", "params"),
    [
        ("pixel", "coordconv", 7_553),
        ("render", "coordconv", 11_850),
        ("pixel", "baseline", 103_585),
        ("render", "baseline", 103_585),
    ],
)
def test_parameter_counts_match_the_paper(task, arch, params) -> None:
    assert count_parameters(build(task, arch)) == params


def test_locate_coordconv_is_small() -> None:
    assert count_parameters(build("locate", "coordconv")) < 20_000


@pytest.mark.parametrize("arch", ["coordconv", "baseline"])
def test_output_shapes_and_ranges(arch) -> None:
    coords = torch.tensor([[4.0, 4.0], [59.0, 30.5], [0.0, 63.0]])
    heat = build("pixel", arch).eval().predict(coords)
    assert heat.shape == (3, 64, 64)
    assert torch.allclose(heat.sum(dim=(1, 2)), torch.ones(3), atol=1e-5)
    img = build("render", arch).eval().predict(coords)
    assert img.shape == (3, 64, 64) and img.min() >= 0 and img.max() <= 1
    xy = build("locate", arch).eval().predict(torch.rand(5, 64, 64))
    assert xy.shape == (5, 2)


def test_unknown_task_or_arch_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        build("segment", "coordconv")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown architecture"):
        build("pixel", "resnet")  # type: ignore[arg-type]
