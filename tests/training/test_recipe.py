"""The two recipes and the switches of `ours`: each switch changes what it says and nothing else,
and `paper` is the reference code's recipe."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from torch import nn

from experiments import recipe as recipes
from experiments.recipe import train_config
from training.data import carve_validation, task_data
from training.layers import CoordConv2d
from training.nets import (
    CoordConvLocate,
    CoordConvPixel,
    CoordConvRender,
    PaperRegressor,
    build,
    he_normal_,
)
from training.train import (
    LOSS_FLAGS,
    l2_penalty,
    loss_fn,
    recalibrate_bn,
)

ROWS: list[tuple[str, str]] = [(task, arch) for task, arch in recipes.PAPER]


def test_the_paper_recipe_is_the_reference_codes() -> None:
    for row in [("pixel", "coordconv"), ("render", "coordconv")]:
        s = recipes.resolve(*row, "paper")
        assert (s.lr, s.batch_size, s.l2, s.cosine, s.torch_init) == (
            0.005,
            16,
            0.001,
            False,
            False,
        )
        assert not s.unit_inputs  # the reference tiles the raw pixels (4..59)
    s = recipes.resolve("locate", "coordconv906", "paper")
    assert (s.lr, s.l2, s.peak_init, s.pixel_mse) == (0.01, 1e-5, False, False)
    assert s.batch_size == 256 and not s.unit_output  # train.py's default; output vs loc / 64
    assert s.epochs == recipes.PAPER_EPOCHS[("locate", "coordconv906")]
    for row in ROWS:  # no change of ours is on in the paper's recipe
        s = recipes.resolve(*row, "paper")
        assert s.epochs == recipes.PAPER_EPOCHS[row]
        flags = {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}
        assert not any(v for k, v in flags.items() if isinstance(v, bool) and k != "cosine")


def test_ours_is_the_previous_defaults() -> None:
    assert recipes.resolve("pixel", "coordconv").epochs == 2
    assert recipes.resolve("render", "coordconv").epochs == 2
    loc = recipes.resolve("locate", "coordconv")
    assert (loc.epochs, loc.lr, loc.l2, loc.heatmap_ce, loc.zero_coord_init) == (3, 0.005, 0, 1, 1)
    r906 = recipes.resolve("locate", "coordconv906")
    assert (r906.epochs, r906.lr, r906.cosine, r906.peak_init) == (10, 0.001, True, True)


@pytest.mark.parametrize(
    ("row", "change"), [(row, c) for row in ROWS for c in recipes.changes_of(*row)]
)
def test_each_switch_turns_one_thing_back_to_the_paper(row: tuple[str, str], change: str) -> None:
    ours = dataclasses.asdict(recipes.resolve(*row, "ours"))
    minus = dataclasses.asdict(recipes.resolve(*row, "ours", without=(change,)))
    paper = dataclasses.asdict(recipes.resolve(*row, "paper"))
    moved = {k for k in ours if ours[k] != minus[k]}
    assert moved, f"{change} changes nothing on {row}"
    assert all(minus[k] == paper[k] for k in moved)  # back to the paper's value
    # with every change off, ours is the paper's recipe
    every = tuple(recipes.changes_of(*row))
    assert dataclasses.asdict(recipes.resolve(*row, "ours", without=every)) == paper


@pytest.mark.parametrize(
    ("row", "change"), [(row, c) for row, cs in recipes.SUFFICIENCY.items() for c in cs]
)
def test_paper_plus_one_change_moves_exactly_what_the_change_moves_in_ours(
    row: tuple[str, str], change: str
) -> None:
    paper = dataclasses.asdict(recipes.resolve(*row, "paper"))
    plus = dataclasses.asdict(recipes.resolve(*row, "paper", plus=(change,)))
    ours = dataclasses.asdict(recipes.resolve(*row, "ours"))
    minus = dataclasses.asdict(recipes.resolve(*row, "ours", without=(change,)))
    moved = {k for k in paper if paper[k] != plus[k]}
    assert moved == {k for k in ours if ours[k] != minus[k]}
    assert all(plus[k] == ours[k] for k in moved)  # to ours' value, nothing else


def test_unknown_recipes_and_changes_are_refused() -> None:
    with pytest.raises(ValueError, match="not a change of pixel/coordconv"):
        recipes.resolve("pixel", "coordconv", "paper", plus=("peak_init",))
    with pytest.raises(ValueError, match="adds changes to the `paper` recipe"):
        recipes.resolve("pixel", "coordconv", "ours", plus=("no_l2",))
    with pytest.raises(ValueError, match="unknown recipe"):
        recipes.resolve("pixel", "coordconv", "tuned")
    with pytest.raises(ValueError, match="unknown change"):
        recipes.resolve("pixel", "coordconv", without=("magic",))
    with pytest.raises(ValueError, match="not `paper`"):
        recipes.resolve("pixel", "coordconv", "paper", without=("offset_init",))


def _first(net: nn.Module) -> nn.Conv2d:
    conv = next(m for m in net.modules() if isinstance(m, CoordConv2d))
    return conv.conv


def test_offset_init_ties_the_first_layer_to_the_offset() -> None:
    torch.manual_seed(0)
    w = _first(build("pixel", "coordconv", offset_init=True)).weight
    assert torch.equal(w[:, 2], -w[:, 0]) and torch.equal(w[:, 3], -w[:, 1])
    w = _first(build("pixel", "coordconv", offset_init=False)).weight
    assert not torch.allclose(w[:, 2], -w[:, 0])
    render = build("render", "coordconv", offset_init=False)
    assert isinstance(render, CoordConvRender)
    w = _first(render.pixel).weight
    assert not torch.allclose(w[:, 2], -w[:, 0])


def test_the_paper_nets_see_raw_pixels_and_answer_in_pixels_over_64() -> None:
    """`paper` feeds the tiled point as raw pixels (the reference: 4..59 beside coordinate
    channels in [-1, 1]), `ours` in [-1, 1]; the offset init ties the first layer to the offset
    (x_in - i) in both scales. The 906 regressor's raw output is the location / 64 under
    `paper`."""
    points = torch.tensor([[10.0, 20.0], [40.0, 50.0], [4.0, 59.0]])
    pre = []
    for unit in (True, False):
        torch.manual_seed(0)
        net = build("pixel", "coordconv", offset_init=True, torch_init=False, unit_inputs=unit)
        assert isinstance(net, CoordConvPixel) and net.unit_inputs is unit
        first = net.body[0]
        assert isinstance(first, CoordConv2d)
        point = points * (2 / 63) - 1 if unit else points
        with torch.no_grad():
            tiled = first.add_coords(point[:, :, None, None].expand(-1, -1, 64, 64))
            pre.append(first.conv(tiled))
        if not unit:  # the raw net's first layer sees the point's pixels, up to 59
            assert float(tiled[:, :2].abs().max()) == 59.0
            assert float(tiled[:, 2:].abs().max()) == 1.0
    # the same function of the offset, in pixels rather than in half-canvases
    torch.testing.assert_close(pre[1], pre[0] * 31.5, rtol=1e-4, atol=1e-3)
    torch.manual_seed(0)
    r = PaperRegressor(peak_init=False, unit_output=False)
    image = torch.zeros(1, 64, 64)
    image[0, 10, 20] = 1.0
    with torch.no_grad():
        assert torch.equal(r(image), r.body(image.unsqueeze(1)).amax(dim=(2, 3)) * 64)


def test_he_normal_init_is_the_references() -> None:
    torch.manual_seed(0)
    net = build("pixel", "coordconv", torch_init=False, offset_init=False)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs:
        assert conv.bias is not None and not conv.bias.any()
    big = nn.Conv2d(64, 64, 3)
    he_normal_(big)
    assert big.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)
    default = build("pixel", "coordconv", offset_init=False)
    assert any(
        m.bias is not None and m.bias.any() for m in default.modules() if isinstance(m, nn.Conv2d)
    )


def test_spread_init_starts_the_painter_on_the_square() -> None:
    torch.manual_seed(0)
    on = build("render", "coordconv", spread_init=True)
    off = build("render", "coordconv", spread_init=False)
    assert isinstance(on, CoordConvRender) and isinstance(off, CoordConvRender)
    assert all((m.weight >= 0).all() for m in on.paint if isinstance(m, nn.Conv2d))
    assert any((m.weight < 0).any() for m in off.paint if isinstance(m, nn.Conv2d))
    peak = torch.zeros(1, 1, 64, 64)
    peak[0, 0, 30, 30] = 1.0
    support = on.paint[:-1](peak).abs().sum(1)[0] > 0  # the hidden layers' support: 9x9
    assert support.sum().item() == 81


def _max_distance(net: PaperRegressor, points: list[tuple[int, int]]) -> float:
    """The largest distance between a hot pixel and its output maps' max."""
    worst = 0.0
    for y, x in points:
        hot = torch.zeros(1, 1, 64, 64)
        hot[0, 0, y, x] = 1.0
        at = net.body(hot)[0].flatten(1).argmax(1)
        for a in at.tolist():
            worst = max(worst, ((a // 64 - y) ** 2 + (a % 64 - x) ** 2) ** 0.5)
    return worst


def test_peak_init_puts_the_906_regressors_max_at_the_pixel() -> None:
    points = [(20, 40), (50, 10), (8, 8), (45, 52)]
    torch.manual_seed(3)
    with torch.no_grad():
        assert _max_distance(PaperRegressor(peak_init=True), points) <= 3
        assert _max_distance(PaperRegressor(peak_init=False), points) > 10


def test_the_locate_init_switches_and_coords() -> None:
    torch.manual_seed(0)
    net = build("locate", "coordconv", zero_coord_init=False, zero_bias_init=False)
    assert isinstance(net, CoordConvLocate)
    first = _first(net)
    assert first.weight[:, 1:].abs().sum() > 0 and first.bias is not None and first.bias.any()
    net = build("locate", "coordconv")
    first = _first(net)
    assert not first.weight[:, 1:].any() and first.bias is not None and not first.bias.any()
    plain = build("locate", "coordconv", coords=False)
    assert not any(isinstance(m, CoordConv2d) for m in plain.modules())
    assert plain(torch.rand(2, 64, 64)).shape == (2, 2)


def _flags(**on: bool) -> dict[str, bool]:
    return {**dict.fromkeys(LOSS_FLAGS, False), **on}


def test_each_loss_switch_changes_the_loss() -> None:
    torch.manual_seed(0)
    d = task_data("render", "quadrant")
    x, y = torch.from_numpy(d.x_train[:4]), torch.from_numpy(d.y_train[:4])
    net = build("render", "coordconv")
    plain = loss_fn("render", net, x, y, _flags()).item()
    expected = nn.functional.binary_cross_entropy_with_logits(net(x), y).item()
    assert plain == pytest.approx(expected, rel=1e-5)
    for flag in ("pixel_aux", "taught_painter", "iou_loss"):
        assert loss_fn("render", net, x, y, _flags(**{flag: True})).item() > plain

    d = task_data("locate", "quadrant")
    x, y = torch.from_numpy(d.x_train[:4]), torch.from_numpy(d.y_train[:4])
    net = build("locate", "coordconv")
    norm = loss_fn("locate", net, x, y, _flags()).item()
    pixels = loss_fn("locate", net, x, y, _flags(pixel_mse=True)).item()
    assert pixels == pytest.approx(norm * 64**2, rel=1e-4)
    assert loss_fn("locate", net, x, y, _flags(heatmap_ce=True)).item() > norm


def test_l2_is_the_references_sum_of_squared_kernels() -> None:
    net = PaperRegressor()
    kernels = sum((m.weight**2).sum().item() for m in net.modules() if isinstance(m, nn.Conv2d))
    assert l2_penalty(net).item() == pytest.approx(kernels, rel=1e-5)
    cfg = train_config("pixel", recipe="paper").resolved()
    assert cfg.l2 == 0.001 and cfg.weight_decay == 0.0 and cfg.epochs == 5
    assert train_config("pixel").resolved().l2 == 0.0
    assert train_config("pixel", without=("no_l2",)).resolved().l2 == 0.001


def test_the_baseline_recipes() -> None:
    paper = train_config("pixel", "baseline", recipe="paper")
    assert paper.resolved().batch_size == 16 and paper.resolved().lr == 0.01
    assert paper.torch_init is False and paper.pixel_mse is False
    ours = train_config("pixel", "baseline")
    assert ours.torch_init is True and ours.cosine is True and ours.recipe == "ours"
    with pytest.raises(ValueError, match="--without"):
        train_config("pixel", "baseline", without=("no_l2",))


def test_batch_norm_statistics_are_recomputed_on_the_training_set() -> None:
    torch.manual_seed(0)
    net = build("pixel", "baseline")
    x = torch.rand(300, 2) * 63
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert recalibrate_bn(net, x, batch=100)
    first: Any = net.body[0]  # type: ignore[index]
    with torch.no_grad():
        h = first((x * (2 / 63) - 1)[:, :, None, None])
    assert bn.running_mean is not None
    assert torch.allclose(bn.running_mean, h.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not recalibrate_bn(build("pixel", "coordconv"), x)


def test_the_validation_split_is_carved_from_the_training_set() -> None:
    d = task_data("pixel", "quadrant")
    n = len(d.x_train)
    xv, _, _ = carve_validation(d, 0.1, seed=10)
    assert len(xv) == round(0.1 * n) and len(d.x_train) == n - len(xv)
    seen = {tuple(p) for p in d.x_train.tolist()}
    assert not any(tuple(p) in seen for p in xv.tolist())
    assert ((xv[:, 0] <= 32) | (xv[:, 1] <= 32)).all()  # never the held-out quadrant
