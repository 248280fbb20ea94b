"""Two recipes for every row: `paper` (the reference code's, uber-research/CoordConv) and `ours`
(the paper's plus the changes below, each of which can be turned off alone, or added alone to
`paper`); `train_config` turns a recipe into the training.train.TrainConfig that states every
knob.

A recipe resolves to a `Settings`: the optimiser's numbers and one flag per change. `ours` minus
a change is `resolve(task, arch, "ours", without=(change,))`: every other setting stays as in
`ours`, so an ablation moves one thing at a time.

The paper's recipe, from the reference code (its experiment_logs.sh and model_builders.py):

- every kernel `he_normal` (a truncated normal of standard deviation sqrt(2 / fan_in)), every
  bias zero (the TensorFlow default), no batch norm in the CoordConv nets;
- the point (x, y) tiled over the canvas as raw pixels (4..59) beside AddCoords' [-1, 1]
  channels (train.py feeds the integer locations; model_builders.py tiles them unscaled);
- Adam, beta1 0.9, beta2 0.99, a constant learning rate, minibatch 16 (the 906-parameter
  regressor: 256, train.py's default, as experiment_logs.sh passes none for it);
- the 906-parameter regressor's max-pooled output compared with location / 64 as it is;
- L2 `lambda * sum(w ** 2)` over the kernels (not the biases) added to the loss;
- classification (pixel) and rendering: lr 0.005, L2 0.001, 50 epochs; losses softmax
  cross-entropy over the 4096 pixels and per-pixel sigmoid cross-entropy;
- the 906-parameter regressor: lr 0.01, L2 1e-5, 100 epochs, MSE on coordinates normalised to
  the canvas (pixels / 64).

The heatmap locate network (`CoordConvLocate`) is not in the paper; as a regression row its
`paper` recipe is the regressor's (lr 0.01, L2 1e-5, MSE on normalised coordinates).

BUDGET: the reference's 50 and 100 epochs do not run here for 10 seeds x 8 rows on a shared
2-core CPU (50 epochs of the renderer alone are 15 minutes a seed). The paper recipe trains every
seed for the same cut budget, `PAPER_EPOCHS`, fixed before any run on the fresh seeds: a tenth of
the reference's 50 epochs for pixel, render and locate (5), and a quarter of its 100 for the
906-parameter regressor (25), which costs a sixth of a pixel epoch per epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch comes with the config; --help and the plan need neither
    from training.train import TrainConfig

# Per (task, arch) the reference epochs, and the cut budget this project runs them for.
REFERENCE_EPOCHS = {
    ("pixel", "coordconv"): 50,
    ("render", "coordconv"): 50,
    ("locate", "coordconv"): 100,
    ("locate", "coordconv906"): 100,
}
PAPER_EPOCHS = {
    ("pixel", "coordconv"): 5,
    ("render", "coordconv"): 5,
    ("locate", "coordconv"): 5,
    ("locate", "coordconv906"): 25,
}
RECIPES = ("paper", "ours")


@dataclass(frozen=True)
class Settings:
    """Everything a recipe decides for one row."""

    epochs: int
    lr: float
    batch_size: int
    l2: float  # lambda of lambda * sum(kernel ** 2), added to the loss
    cosine: bool  # cosine decay of the learning rate to zero (else constant)
    torch_init: bool  # PyTorch's default init (else he_normal kernels, zero biases)
    offset_init: bool  # pixel/render: first layer a function of (point - pixel)
    spread_init: bool  # render: the painter starts with exactly the 9x9 support
    pixel_aux: bool  # render: cross-entropy on the centre pixel of the intermediate map
    taught_painter: bool  # render: the painter also learns from the true centre pixel
    iou_loss: bool  # render: 1 - soft IoU added to the per-pixel sigmoid cross-entropy
    heatmap_ce: bool  # locate: cross-entropy on the heatmap's centre pixel
    zero_coord_init: bool  # locate: the coordinate channels' first-layer weights start at 0
    zero_bias_init: bool  # locate: every bias starts at 0 (a no-op under he_normal)
    peak_init: bool  # 906: output maps flipped and image weights x100: the max at the pixel
    pixel_mse: bool  # locate, 906: MSE in pixels (else on coordinates / 64, the reference's)
    unit_inputs: bool  # pixel/render: the tiled point in [-1, 1] (else raw pixels, the reference's)
    unit_output: bool  # 906: the output read in [-1, 1] (else as pixels / 64, the reference's)


# Each change of `ours`: the rows it touches, what it is, and the value `ours` gives the setting
# (the paper's value is in PAPER below). The order is the ablation order (most suspect first).
CHANGES: dict[str, dict[str, Any]] = {
    "offset_init": {
        "rows": [("pixel", "coordconv"), ("render", "coordconv")],
        "what": "first layer initialised as a function of the offset (x_in - i, y_in - j) "
        "between the point and the pixel (weights tied in pairs)",
    },
    "unit_inputs": {
        "rows": [("pixel", "coordconv"), ("render", "coordconv")],
        "what": "the tiled point scaled to [-1, 1], the scale of the coordinate channels (the "
        "reference tiles the raw pixels, 4..59)",
    },
    "peak_init": {
        "rows": [("locate", "coordconv906")],
        "what": "906 regressor: output maps flipped to respond positively to a hot pixel, "
        "image weights x100, bias shifted: the max starts at the hot pixel",
    },
    "spread_init": {
        "rows": [("render", "coordconv")],
        "what": "painter kernels non-negative, biases zero, last layer centre-only: the "
        "painter starts with exactly the 9x9 support",
    },
    "taught_painter": {
        "rows": [("render", "coordconv")],
        "what": "painter also trained on the one-hot true centre pixel (a second loss term)",
    },
    "pixel_aux": {
        "rows": [("render", "coordconv")],
        "what": "cross-entropy of the intermediate softmax map against the centre pixel",
    },
    "iou_loss": {
        "rows": [("render", "coordconv")],
        "what": "1 - soft IoU added to the per-pixel sigmoid cross-entropy",
    },
    "zero_coord_init": {
        "rows": [("locate", "coordconv")],
        "what": "heatmap net: the coordinate channels' first-layer weights start at zero",
    },
    "heatmap_ce": {
        "rows": [("locate", "coordconv")],
        "what": "heatmap net: cross-entropy of the heatmap against the centre pixel added "
        "to the soft-argmax's coordinate MSE",
    },
    "zero_bias_init": {
        "rows": [("locate", "coordconv")],
        "what": "heatmap net: every bias starts at zero (matters only with torch_init)",
    },
    "torch_init": {
        "rows": list(REFERENCE_EPOCHS),
        "what": "PyTorch's default init (kaiming-uniform kernels, uniform biases) instead of "
        "he_normal kernels and zero biases",
    },
    "no_l2": {
        "rows": list(REFERENCE_EPOCHS),
        "what": "no L2 (the paper: 0.001 for pixel and render, 1e-5 for regression)",
    },
    "lr": {
        "rows": [("locate", "coordconv"), ("locate", "coordconv906")],
        "what": "a lower learning rate: 0.005 (heatmap net), 0.001 (906) instead of 0.01",
    },
    "cosine": {
        "rows": [("locate", "coordconv906")],
        "what": "906 regressor: cosine decay of the learning rate to zero (the paper: constant)",
    },
    "unit_output": {
        "rows": [("locate", "coordconv906")],
        "what": "906 regressor: the max pool's output read as [-1, 1] over the canvas, "
        "(out + 1) x 31.5 pixels (the reference reads it as pixels / 64)",
    },
    "minibatch_16": {
        "rows": [("locate", "coordconv906")],
        "what": "906 regressor: minibatch 16 instead of the reference's 256",
    },
    "pixel_mse": {
        "rows": [("locate", "coordconv"), ("locate", "coordconv906")],
        "what": "MSE on pixel coordinates instead of on coordinates / 64 (the reference's)",
    },
    "short_epochs": {
        "rows": list(REFERENCE_EPOCHS),
        "what": "fewer epochs than the paper budget: 2 (pixel, render), 3 (locate), 10 (906) "
        "instead of 5, 5, 5, 25 (the reference: 50, 50, 100, 100)",
    },
}

# The paper's settings per row (the fields no change touches are shared).
_PAPER_BASE: dict[str, Any] = {
    "batch_size": 16,
    "cosine": False,
    "torch_init": False,
    "offset_init": False,
    "spread_init": False,
    "pixel_aux": False,
    "taught_painter": False,
    "iou_loss": False,
    "heatmap_ce": False,
    "zero_coord_init": False,
    "zero_bias_init": False,
    "peak_init": False,
    "pixel_mse": False,
    "unit_inputs": False,
    "unit_output": False,
}
PAPER: dict[tuple[str, str], Settings] = {
    ("pixel", "coordconv"): Settings(epochs=5, lr=0.005, l2=0.001, **_PAPER_BASE),
    ("render", "coordconv"): Settings(epochs=5, lr=0.005, l2=0.001, **_PAPER_BASE),
    ("locate", "coordconv"): Settings(epochs=5, lr=0.01, l2=1e-5, **_PAPER_BASE),
    ("locate", "coordconv906"): Settings(
        epochs=25, lr=0.01, l2=1e-5, **{**_PAPER_BASE, "batch_size": 256}
    ),
}
# What each change sets, per row, when it is on (`ours` = PAPER with every change of the row on).
_OURS_VALUES: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
    "short_epochs": {
        ("pixel", "coordconv"): {"epochs": 2},
        ("render", "coordconv"): {"epochs": 2},
        ("locate", "coordconv"): {"epochs": 3},
        ("locate", "coordconv906"): {"epochs": 10},
    },
    "no_l2": {row: {"l2": 0.0} for row in REFERENCE_EPOCHS},
    "lr": {("locate", "coordconv"): {"lr": 0.005}, ("locate", "coordconv906"): {"lr": 0.001}},
    "minibatch_16": {("locate", "coordconv906"): {"batch_size": 16}},
}


# Sufficiency (block `sufficiency`, experiments/campaign.py): the paper's recipe plus ONE change of
# ours, per row. The ablations say what is necessary inside ours; these say what suffices on its
# own. `short_epochs` is left out everywhere: it only cuts the budget.
SUFFICIENCY: dict[tuple[str, str], list[str]] = {
    ("pixel", "coordconv"): ["unit_inputs", "no_l2", "offset_init", "torch_init"],
    ("render", "coordconv"): [
        "offset_init",
        "unit_inputs",
        "spread_init",
        "taught_painter",
        "pixel_aux",
        "iou_loss",
        "torch_init",
        "no_l2",
    ],
    ("locate", "coordconv906"): ["peak_init", "minibatch_16", "no_l2", "unit_output"],
}


def changes_of(task: str, arch: str) -> list[str]:
    """The changes `ours` makes to the paper's recipe on this row, in ablation order."""
    return [name for name, c in CHANGES.items() if (task, arch) in c["rows"]]


def resolve(
    task: str,
    arch: str,
    recipe: str = "ours",
    without: tuple[str, ...] = (),
    plus: tuple[str, ...] = (),
) -> Settings:
    """The settings of a row under a recipe, with the changes in `without` turned off (only
    for `ours`) or those in `plus` turned on (only for `paper`: what one change does alone)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    unknown = [c for c in (*without, *plus) if c not in CHANGES]
    if unknown:
        raise ValueError(
            f"unknown change(s) {', '.join(unknown)}; choose from {', '.join(CHANGES)}"
        )
    row = (task, arch)
    if row not in PAPER:
        raise ValueError(f"no recipe for {task}/{arch} (the baselines have their own search)")
    s = PAPER[row]
    if recipe == "paper":
        if without:
            raise ValueError("--without turns off changes of the `ours` recipe, not `paper`")
        foreign = [c for c in plus if c not in changes_of(task, arch)]
        if foreign:
            raise ValueError(
                f"{', '.join(foreign)} is not a change of {task}/{arch}; choose from "
                f"{', '.join(changes_of(task, arch))}"
            )
        return _with(s, row, plus)
    if plus:
        raise ValueError("--plus adds changes to the `paper` recipe; `ours` has them all")
    return _with(s, row, [c for c in changes_of(task, arch) if c not in without])


def _with(s: Settings, row: tuple[str, str], changes: Sequence[str]) -> Settings:
    """`s` with each change's values (experiments.recipe._OURS_VALUES, else its flag) set."""
    names = {f.name for f in fields(Settings)}
    for change in changes:
        values = _OURS_VALUES.get(change, {}).get(row)
        if values is None:
            assert change in names, change
            values = {change: True}
        s = replace(s, **values)
    return s


def describe(task: str, arch: str, recipe: str, without: tuple[str, ...] = ()) -> str:
    """One line: the recipe's numbers for the table's header."""
    s = resolve(task, arch, recipe, without)
    init = "PyTorch default init" if s.torch_init else "he_normal kernels, zero biases"
    sched = "cosine to 0" if s.cosine else "constant"
    if task in ("pixel", "render"):
        init = ("point in [-1, 1]" if s.unit_inputs else "raw point (pixels)") + f"; {init}"
    return (
        f"{init}; Adam lr {s.lr:g} ({sched}), betas 0.9/0.99, minibatch {s.batch_size}, "
        f"L2 {s.l2:g}, {s.epochs} epochs"
    )


# The baselines (deconv nets, the conv regressor) have no changes to switch: `paper` is the
# reference's deconv settings (he_normal, Adam lr 0.01, minibatch 16, no L2; its step schedule
# divides the rate by 10 every 200 epochs, so it is constant within any budget run here) and its
# conv regressor's (lr 0.001, L2 1e-5, MSE on coordinates / 64); `ours` is PyTorch's default
# init, cosine decay and MSE in pixels. The campaign's baselines use `paper` with the
# configuration its validation search chose (experiments/campaign.py).
BASELINE: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "pixel": {"epochs": 100, "lr": 0.01, "batch_size": 16, "cosine": False, "l2": 0.0},
        "render": {"epochs": 100, "lr": 0.01, "batch_size": 16, "cosine": False, "l2": 0.0},
        "locate": {"epochs": 30, "lr": 0.001, "batch_size": 16, "cosine": False, "l2": 1e-5},
    },
    "ours": {
        "pixel": {"epochs": 100, "lr": 0.003, "batch_size": 32, "cosine": True, "l2": 0.0},
        "render": {"epochs": 100, "lr": 0.003, "batch_size": 32, "cosine": True, "l2": 0.0},
        "locate": {"epochs": 30, "lr": 0.001, "batch_size": 16, "cosine": True, "l2": 0.0},
    },
}


def knobs(
    task: str,
    arch: str,
    recipe: str = "ours",
    without: Sequence[str] = (),
    plus: Sequence[str] = (),
) -> dict[str, Any]:
    """The recipe's numbers and switches for a row (training.train.KNOBS)."""
    if arch != "baseline":
        return asdict(resolve(task, arch, recipe, tuple(without), tuple(plus)))
    if without or plus:
        raise ValueError("--without and --plus name changes of the CoordConv rows' recipes")
    if recipe not in RECIPES:
        resolve(task, "coordconv", recipe)  # its error message
    if task not in BASELINE[recipe]:
        raise ValueError(f"unknown task {task!r}; choose one of pixel, render, locate")
    flags = {f.name: False for f in fields(Settings) if f.type in ("bool", bool)}
    # ours: PyTorch's init and, for the regressor, MSE in pixels
    flags.update(torch_init=recipe == "ours", pixel_mse=recipe == "ours")
    return {**flags, **BASELINE[recipe][task]}


def train_config(
    task: str,
    arch: str = "coordconv",
    recipe: str = "ours",
    without: Sequence[str] = (),
    plus: Sequence[str] = (),
    **overrides: Any,
) -> TrainConfig:
    """The TrainConfig of a row under a recipe: its knobs, then `overrides` (any TrainConfig
    field; None leaves the recipe's value)."""
    from training.train import TrainConfig

    values = knobs(task, arch, recipe, without, plus)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(
        task=task,  # type: ignore[arg-type]
        arch=arch,  # type: ignore[arg-type]
        recipe=recipe,
        without=tuple(without),
        plus=tuple(plus),
        **values,
    )
