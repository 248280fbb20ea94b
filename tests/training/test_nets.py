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


def test_the_papers_906_parameter_regressor() -> None:
    net = build("locate", "coordconv906")
    assert count_parameters(net) == 906
    # No activation anywhere: the layers are AddCoords, convolutions and a max.
    assert not any(isinstance(m, torch.nn.ReLU) for m in net.modules())
    # Its init makes the max of each output map start at a one-hot pixel.
    img = torch.zeros(3, 64, 64)
    pts = [(5, 9), (40, 33), (60, 60)]
    for i, (x, y) in enumerate(pts):
        img[i, y, x] = 1.0
    maps = net.body(img.unsqueeze(1))  # type: ignore[operator]
    peaks = maps.flatten(2).argmax(-1)
    for i, (x, y) in enumerate(pts):
        for p in peaks[i].tolist():
            assert abs(p % 64 - x) <= 2 and abs(p // 64 - y) <= 2
    with pytest.raises(ValueError, match="locate network"):
        build("pixel", "coordconv906")


@pytest.mark.parametrize(("task", "kernel", "width"), [("pixel", 4, 1), ("render", 5, 2)])
def test_baselines_take_the_papers_filter_size_and_width(task, kernel, width) -> None:
    net = build(task, "baseline", kernel=kernel, width=width)
    assert net.eval().predict(torch.tensor([[4.0, 59.0]])).shape == (1, 64, 64)
    assert count_parameters(net) > count_parameters(build(task, "baseline"))
    assert build("locate", "baseline", kernel=5, width=2)(torch.rand(2, 64, 64)).shape == (2, 2)
    with pytest.raises(ValueError, match="odd kernel"):
        build("locate", "baseline", kernel=4)


def test_render_painter_starts_one_threshold_from_the_square() -> None:
    net = build("render", "coordconv")
    delta = torch.zeros(1, 1, 64, 64)
    delta[0, 0, 30, 20] = 1.0
    support = net.paint(delta)[0, 0] > 0  # type: ignore[operator]
    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[26:35, 16:25] = True  # the 9x9 square around (x=20, y=30)
    assert torch.equal(support, expected)


def test_pixel_net_starts_as_a_function_of_the_offset() -> None:
    # The first layer sees (x_in - i, y_in - j): moving the point and the canvas together
    # changes nothing, so the held-out quadrant looks like the rest at the start.
    net = build("pixel", "coordconv").eval()
    a = net(torch.tensor([[10.0, 12.0]]))[0]
    b = net(torch.tensor([[40.0, 45.0]]))[0]
    assert torch.allclose(a[2:30, 0:30], b[35:63, 30:60], atol=1e-5)


def test_locate_net_starts_translation_equivariant_and_sees_a_one_hot_pixel() -> None:
    # No coordinate weights and no biases at init: the heatmap of a shifted image is the shifted
    # heatmap (away from the border), and a lone pixel lights it up near where it is.
    torch.manual_seed(7)
    net = build("locate", "coordconv").eval()
    a = torch.zeros(1, 64, 64)
    a[0, 20, 14] = 1.0
    b = torch.roll(a, shifts=(17, 23), dims=(1, 2))
    heat_a = net.forward_aux(a)[1][0]  # type: ignore[operator]
    heat_b = net.forward_aux(b)[1][0]  # type: ignore[operator]
    assert torch.allclose(heat_a[10:30, 4:24], heat_b[27:47, 27:47], atol=1e-6)
    assert heat_a.abs().max() > 0
    far = heat_a.clone()
    far[15:26, 9:20] = 0  # the pixel's 11x11 neighbourhood: the receptive field and a bit
    assert far.abs().max() == 0
