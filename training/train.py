"""The training loop, top to bottom: data for a task, a network, Adam, a fixed number of epochs,
train and test metrics after every epoch, and a run folder with the checkpoint and metrics.

A run folder holds `config.json`, `model.pt` (the state dict) and `metrics.json` (final train and
test metrics, parameters, wall time, and the per-epoch history for learning curves).
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from training import data, metrics
from training import recipe as recipes
from training.nets import (
    ARCHS,
    Arch,
    CoordConvLocate,
    CoordConvRender,
    CoordNet,
    Task,
    build,
    count_parameters,
)
from training.onnx_weights import weights_from_onnx

# The baselines' settings under the `ours` recipe (the campaign's baselines use the `paper`
# recipe and the configuration its validation search chose, training/campaign.py). The CoordConv
# rows' settings come from training/recipe.py (`paper` and `ours`, one switch per change).
DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("pixel", "baseline"): {"epochs": 100, "lr": 0.003, "batch_size": 32, "cosine": True},
    ("render", "baseline"): {"epochs": 100, "lr": 0.003, "batch_size": 32, "cosine": True},
    ("locate", "baseline"): {"epochs": 30, "lr": 0.001, "batch_size": 16, "cosine": True},
}
# The baselines under the `paper` recipe: the reference's deconv settings (he_normal, Adam lr
# 0.01, minibatch 16, no L2; its step schedule divides the rate by 10 every 200 epochs, so it is
# constant within any budget run here) and its conv regressor's (lr 0.001, L2 1e-5).
PAPER_BASELINE: dict[str, dict[str, Any]] = {
    "pixel": {"epochs": 100, "lr": 0.01, "batch_size": 16, "cosine": False, "l2": 0.0},
    "render": {"epochs": 100, "lr": 0.01, "batch_size": 16, "cosine": False, "l2": 0.0},
    "locate": {"epochs": 30, "lr": 0.001, "batch_size": 16, "cosine": False, "l2": 1e-5},
}
INIT_FLAGS = (
    "torch_init",
    "offset_init",
    "spread_init",
    "zero_coord_init",
    "zero_bias_init",
    "peak_init",
)
LOSS_FLAGS = ("pixel_aux", "taught_painter", "iou_loss", "heatmap_ce", "pixel_mse")
# Flags that change what the network computes (not only how it starts): kept with the weights.
FORWARD_FLAGS = ("unit_inputs", "unit_output")

# The goals of the paper's CoordConv rows, judged on the test set. Render is also judged on the
# values it paints (training.metrics.render_values): IoU at threshold 0.5 alone gives 1.000 to a
# model that paints the square and a grey wash everywhere else.
GOALS = {
    "pixel": "accuracy = 100%",
    "render": (
        f"IoU >= 0.99 (background mean <= {metrics.BACKGROUND_MEAN_MAX}, "
        f"square mean >= {metrics.SQUARE_MEAN_MIN})"
    ),
    "locate": "error <= 0.5 px",
    "coordconv906": "100% exact",
}
# A model that misses these on its own training set did not fit, so its test failure says nothing
# about generalisation.
FIT = {"pixel": 0.90, "render": 0.80, "locate": 1.0}
HISTORY_PROBE = 512
PRIMARY = {"pixel": "accuracy", "render": "iou", "locate": "mean_error_px"}


@dataclass
class TrainConfig:
    task: Task = "pixel"
    arch: Arch = "coordconv"
    split: data.Split = "quadrant"
    recipe: str = "ours"  # training.recipe: "paper" (the reference code's) or "ours"
    without: tuple[str, ...] = ()  # changes of `ours` turned off (training.recipe.CHANGES)
    plus: tuple[str, ...] = ()  # changes added alone to the `paper` recipe (sufficiency)
    epochs: int | None = None  # None: the recipe's
    lr: float | None = None
    batch_size: int | None = None
    weight_decay: float | None = None  # Adam's coupled decay (legacy; the recipes use l2)
    l2: float | None = None  # lambda * sum(kernel ** 2) added to the loss; None: the recipe's
    cosine: bool | None = None  # cosine decay of the learning rate to zero
    coords: bool = True  # locate heatmap net: False drops its coordinate channels
    onehot_only: bool | None = None  # locate on one-hot images only (None: for coordconv906)
    val_fraction: float = 0.0  # carve a validation set from the training set (seeded)
    bn_recalibrate: bool = True  # batch norm: statistics recomputed on the training set
    kernel: int = 3  # the baselines' filter size (the paper's search)
    width: int = 1  # the baselines' width multiplier
    seed: int = 0
    init_onnx: str | None = None  # start from the weights of a model this project exported
    test_fraction: float = 0.25
    device: str = "auto"
    out: str | None = None
    progress: bool = True
    # Stop once the test goal has been met on this many consecutive epochs (0: never stop early).
    stop_after_goal: int = 0

    def resolved(self) -> TrainConfig:
        """A copy with DEFAULTS filled in, validated."""
        if self.task not in PRIMARY:
            raise ValueError(f"unknown task {self.task!r}; choose one of pixel, render, locate")
        if self.arch not in ARCHS:
            raise ValueError(
                f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHS)}"
            )
        if self.split not in data.SPLITS:
            raise ValueError(f"unknown split {self.split!r}; choose one of {data.SPLITS}")
        if self.arch == "coordconv906" and self.task != "locate":
            raise ValueError("the 906-parameter regressor is a locate network (--task locate)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        d = self.recipe_defaults()
        cfg = TrainConfig(**{**asdict(self)})
        cfg.without = tuple(self.without)
        cfg.plus = tuple(self.plus)
        cfg.epochs = d["epochs"] if self.epochs is None else self.epochs
        cfg.lr = d["lr"] if self.lr is None else self.lr
        cfg.batch_size = d["batch_size"] if self.batch_size is None else self.batch_size
        cfg.weight_decay = 0.0 if self.weight_decay is None else self.weight_decay
        cfg.l2 = d.get("l2", 0.0) if self.l2 is None else self.l2
        cfg.cosine = d["cosine"] if self.cosine is None else self.cosine
        if cfg.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {cfg.epochs}")
        if cfg.lr <= 0 or not math.isfinite(cfg.lr):
            raise ValueError(f"lr must be a positive number, got {cfg.lr}")
        if cfg.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {cfg.batch_size}")
        if cfg.l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {cfg.l2}")
        if cfg.stop_after_goal < 0:
            raise ValueError(f"stop_after_goal must be >= 0, got {cfg.stop_after_goal}")
        return cfg

    def recipe_defaults(self) -> dict[str, Any]:
        """The recipe's numbers and flags for this row (before explicit overrides)."""
        if self.arch == "baseline":
            if self.without or self.plus:
                raise ValueError("--without and --plus name changes of the CoordConv rows' recipes")
            if self.recipe == "paper":
                return {**PAPER_BASELINE[self.task], "torch_init": False}
            if self.recipe != "ours":
                recipes.resolve(self.task, "coordconv", self.recipe)  # the error message
            return {**DEFAULTS[(self.task, self.arch)], "torch_init": True}
        return asdict(
            recipes.resolve(
                self.task, self.arch, self.recipe, tuple(self.without), tuple(self.plus)
            )
        )

    def flags(self) -> dict[str, bool]:
        """The recipe's init and loss flags (training.recipe.Settings) for this row."""
        d = self.recipe_defaults()
        out = {k: bool(d.get(k, False)) for k in (*INIT_FLAGS, *LOSS_FLAGS, *FORWARD_FLAGS)}
        if self.arch == "baseline":
            # the conv regressor's loss: the reference's (coordinates / 64) under `paper`,
            # MSE in pixels under `ours` (as before)
            out["pixel_mse"] = self.recipe != "paper"
        return out

    def uses_onehot_only(self) -> bool:
        return self.arch == "coordconv906" if self.onehot_only is None else self.onehot_only


@dataclass
class TaskData:
    """Inputs and targets of one task, split into train and test."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    kinds_train: np.ndarray  # "square" | "onehot" per row for locate, "" otherwise
    kinds_test: np.ndarray


def task_data(
    task: Task,
    split: data.Split,
    seed: int = 0,
    test_fraction: float = 0.25,
    onehot_only: bool = False,
) -> TaskData:
    """pixel: coords -> flat pixel index; render: coords -> square masks;
    locate: square and one-hot images of the same centres -> coords (`onehot_only`: one-hot
    images alone, for the paper's 906-parameter regressor)."""
    if split == "full":
        return full_canvas_data(task, seed)
    train_idx, test_idx = data.split_indices(split, seed=seed, test_fraction=test_fraction)
    c = data.centres()

    def part(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        pts = c[idx]
        blank = np.full(len(pts), "")
        if task == "pixel":
            return torch.from_numpy(pts), torch.from_numpy(data.pixel_index(pts)), blank
        if task == "render":
            return torch.from_numpy(pts), torch.from_numpy(data.squares(pts)), blank
        if onehot_only:
            kind = np.full(len(pts), "onehot")
            return torch.from_numpy(data.onehots(pts)), torch.from_numpy(pts), kind
        images = np.concatenate([data.squares(pts), data.onehots(pts)])
        kinds = np.array(["square"] * len(pts) + ["onehot"] * len(pts))
        return torch.from_numpy(images), torch.from_numpy(np.concatenate([pts, pts])), kinds

    x_tr, y_tr, k_tr = part(train_idx)
    x_te, y_te, k_te = part(test_idx)
    return TaskData(x_tr, y_tr, x_te, y_te, k_tr, k_te)


FULL_NOISE_SIGMA = 0.05  # locate v2 also trains on noisy copies: its confidence needs it exact


def full_canvas_data(task: Task, seed: int = 0) -> TaskData:
    """The full-canvas (version 2) data: every integer centre 0..63 on both axes (squares clipped
    at the border) to test on; to train on, the same plus 4096 seeded sub-pixel points (pixel,
    render: the target is the nearest integer centre), or plus copies under Gaussian noise
    (locate, so that it stays exact on slightly noisy images)."""
    c = data.full_centres()
    blank = np.full(len(c), "")
    if task in ("pixel", "render"):
        extra = data.subpixel_points(len(c), seed=1000 + seed)
        x_tr = np.concatenate([c, extra])
        y_tr = data.pixel_index(x_tr) if task == "pixel" else data.squares(x_tr)
        y_te = data.pixel_index(c) if task == "pixel" else data.squares(c)
        return TaskData(
            torch.from_numpy(x_tr),
            torch.from_numpy(y_tr),
            torch.from_numpy(c),
            torch.from_numpy(y_te),
            np.full(len(x_tr), ""),
            blank,
        )
    clean = np.concatenate([data.squares(c), data.onehots(c)])
    rng = np.random.default_rng(2000 + seed)
    noisy = np.clip(clean + rng.normal(0, FULL_NOISE_SIGMA, clean.shape), 0, 1).astype(np.float32)
    kinds = np.array(["square"] * len(c) + ["onehot"] * len(c))
    targets = np.concatenate([c, c])
    return TaskData(
        torch.from_numpy(np.concatenate([clean, noisy])),
        torch.from_numpy(np.concatenate([targets, targets])),
        torch.from_numpy(clean),
        torch.from_numpy(targets),
        np.concatenate([kinds, kinds]),
        kinds,
    )


def render_loss(logits: torch.Tensor, masks: torch.Tensor, iou: bool = True) -> torch.Tensor:
    """Per-pixel sigmoid cross-entropy (the paper's), plus (`iou`, a change of ours) one minus
    the soft IoU, the metric itself. Cross-entropy averages over 4096 pixels, so a square drawn
    without its four corners (IoU 0.95) costs next to nothing and some seeds settled there; the
    IoU term makes those pixels count."""
    bce = F.binary_cross_entropy_with_logits(logits, masks)
    if not iou:
        return bce
    p = torch.sigmoid(logits)
    inter = (p * masks).sum(dim=(1, 2))
    union = (p + masks - p * masks).sum(dim=(1, 2))
    soft_iou = (inter / union.clamp_min(1e-6)).mean()
    return bce + (1.0 - soft_iou)


def coord_mse(pred: torch.Tensor, y: torch.Tensor, pixels: bool) -> torch.Tensor:
    """MSE of coordinates: in pixels (ours), or normalised by the canvas (the reference's
    `train_normalized_locations`, pixels / 64)."""
    return F.mse_loss(pred, y) if pixels else F.mse_loss(pred / data.CANVAS, y / data.CANVAS)


def l2_penalty(model: torch.nn.Module) -> torch.Tensor:
    """sum(w ** 2) over the kernels of every convolution and linear layer (not biases, not batch
    norm): the reference's `kernel_regularizer=l2reg(l2)`."""
    total = torch.zeros(())
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
            total = total.to(m.weight.device) + m.weight.pow(2).sum()
    return total


def loss_fn(
    task: Task,
    model: CoordNet,
    x: torch.Tensor,
    y: torch.Tensor,
    flags: dict[str, bool] | None = None,
) -> torch.Tensor:
    """The task's loss; `flags` (TrainConfig.flags(), default `ours`) turn the loss changes of
    `ours` on or off: pixel_aux, taught_painter, iou_loss (render), heatmap_ce, pixel_mse."""
    f = flags if flags is not None else dict.fromkeys(LOSS_FLAGS, True)
    if task == "pixel":
        return F.cross_entropy(model(x).flatten(1), y)
    if task == "render":
        if isinstance(model, CoordConvRender):
            logits, pixel_logits = model.forward_aux(x)
            loss = render_loss(logits, y, f["iou_loss"])
            target = data.CANVAS * x[:, 1].round().long() + x[:, 0].round().long()
            if f["pixel_aux"]:
                # Also supervise the intermediate map with the centre pixel: the painting
                # layers then start from the right pixel everywhere, the unseen quadrant too.
                loss = loss + F.cross_entropy(pixel_logits.flatten(1), target)
            if f["taught_painter"]:
                # And teach the painter on the true centre pixel: early on the map it is given
                # is still diffuse, and painting from that alone drove some seeds' painters dead.
                onehot = F.one_hot(target, data.CANVAS * data.CANVAS).to(x.dtype)
                taught = model.paint(onehot.view(-1, 1, data.CANVAS, data.CANVAS)).squeeze(1)
                loss = loss + render_loss(taught, y, f["iou_loss"])
            return loss
        return render_loss(model(x), y, f["iou_loss"])
    if isinstance(model, CoordConvLocate):
        point, logits = model.forward_aux(x)
        loss = coord_mse(point, y, f["pixel_mse"])
        if f["heatmap_ce"]:
            # The soft-argmax alone is content with a heatmap one pixel off whose mass spreads
            # back towards the centre, and 2 of 20 seeds settled on such a shifted map (1.41 px
            # on train and test alike). Cross-entropy on the true centre pixel names the peak.
            target = data.CANVAS * y[:, 1].round().long() + y[:, 0].round().long()
            loss = loss + F.cross_entropy(logits.flatten(1), target)
        return loss
    return coord_mse(model(x), y, f["pixel_mse"])


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> bool:
    """Recompute every batch-norm layer's running statistics on `x` (the training set) as exact
    averages over it, in train mode without gradients: the standard fix (as in SWA's
    `update_bn`) for running averages that lag behind the weights. False if there is none."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return False
    was_training = model.training
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    model.train()
    device = next(model.parameters()).device
    for i in range(0, len(x), batch):
        model(x[i : i + batch].to(device))
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.train(was_training)
    return True


@torch.no_grad()
def predict(model: CoordNet, x: torch.Tensor, batch: int = 64) -> np.ndarray:
    """The served outputs (`predict`, with softmax or sigmoid) as numpy, in chunks."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [model.predict(x[i : i + batch].to(device)).cpu() for i in range(0, len(x), batch)]
    model.train(was_training)
    return torch.cat(out).numpy()


def evaluate(
    task: Task, model: CoordNet, x: torch.Tensor, y: torch.Tensor, kinds: np.ndarray
) -> dict[str, float]:
    pred = predict(model, x)
    truth = y.numpy()
    if task == "pixel":
        return {"accuracy": metrics.accuracy(pred, truth)}
    if task == "render":
        # IoU (the paper's metric) and the values it cannot see: background_mean, square_mean,
        # max_pixel_error (training.metrics.render_values)
        return {"iou": metrics.mean_iou(pred, truth), **metrics.render_values(pred, truth)}
    err = metrics.errors_px(pred, truth)
    exact = (np.abs(pred - truth) < 0.5).all(axis=1)  # rounds to the right pixel
    out = {
        "mean_error_px": float(err.mean()),
        "max_error_px": float(err.max()),
        "exact": float(exact.mean()),
    }
    for kind in ("square", "onehot"):
        if (kinds == kind).any():
            out[f"mean_error_px_{kind}"] = float(err[kinds == kind].mean())
    return out


def primary_metric(task: str, arch: str, onehot_only: bool = False) -> str:
    """The metric a run is judged and plotted by: on one-hot pixels alone (the 906-parameter
    regressor, and the conv regressor in the paper's setup), the share located exactly."""
    return "exact" if arch == "coordconv906" or onehot_only else PRIMARY[task]


def format_metric(task: str, arch: str, value: float) -> str:
    """One value of a run's primary metric, as the tables show it."""
    if arch == "coordconv906":
        return f"{100 * value:.1f}% exact"
    if task == "pixel":
        return f"{100 * value:.1f}%"
    if task == "render":
        return f"IoU {value:.3f}"
    return f"{value:.2f} px"


def higher_is_better(metric: str) -> bool:
    return not metric.startswith("mean_error")


def to_goal(history: list[dict[str, Any]]) -> dict[str, float] | None:
    """Epochs and training seconds until the test metric first reached the goal (None: never
    within the run's epochs). The one definition of time to goal: every table and ratio uses it
    (training.reproduce.time_to_goal)."""
    for h in history:
        if h["goal"]:
            return {"epochs": h["epoch"], "seconds": h["time_s"]}
    return None


def to_best(history: list[dict[str, Any]], higher: bool) -> dict[str, float] | None:
    """Epochs and training seconds until the best test metric of the run (the first epoch that
    reached it): what a baseline that never reaches the goal is timed by."""
    if not history:
        return None
    best = max(history, key=lambda h: h["test"] if higher else -h["test"])
    return {"epochs": best["epoch"], "seconds": best["time_s"], "test": best["test"]}


def device_name(device: torch.device) -> str:
    """What trained it, for the table: the GPU's name, or the CPU and its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os

    return f"CPU, {len(os.sched_getaffinity(0))} cores, {torch.get_num_threads()} threads"


def goal_refused(task: str, m: dict[str, float]) -> str | None:
    """Why a render model whose IoU meets the goal still misses it: one line naming the
    value bound it fails (training.metrics.render_value_problem), e.g. "background mean 0.20 >
    0.05 (IoU 1.000 at 0.5 hides it)"; None otherwise, and for metrics recorded before the value
    checks existed."""
    if task != "render" or "background_mean" not in m or m["iou"] < 0.99:
        return None  # (an IoU below the goal says why on its own)
    return metrics.render_value_problem(m, m["iou"])


def goal_met(task: str, m: dict[str, float], arch: str = "coordconv") -> bool:
    if task == "pixel":
        return m["accuracy"] >= 1.0
    if task == "render":
        return m["iou"] >= 0.99 and goal_refused(task, m) is None
    if arch == "coordconv906" or "mean_error_px_square" not in m:
        return m["exact"] >= 1.0  # one-hot pixels alone: every one located exactly
    return max(m["mean_error_px_square"], m["mean_error_px_onehot"]) <= 0.5


def fits(task: str, m: dict[str, float]) -> bool:
    """Did the model fit its training set (see FIT)?"""
    value = m[PRIMARY[task]]
    return value <= FIT[task] if task == "locate" else value >= FIT[task]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(config: TrainConfig) -> dict[str, Any]:
    """Train one model; returns (and, with `out`, writes) its metrics."""
    # Denormal floats (below 1.2e-38) are 10-100x slower on a CPU and change no metric: a
    # locate net whose heatmap grows sharp spent 321 s on one epoch with them, 30 s flushed to
    # zero, to the same figures; a whole `ours` render run (seed 18) gave the same figures
    # both ways too. Flushing is process-wide state: it is put back for whatever runs next.
    flush_denormal = torch.set_flush_denormal(True)
    try:
        return _train(config, flush_denormal)
    finally:
        torch.set_flush_denormal(False)


def _train(config: TrainConfig, flush_denormal: bool) -> dict[str, Any]:
    cfg = config.resolved()
    assert cfg.epochs is not None
    assert cfg.lr is not None
    assert cfg.batch_size is not None
    out = Path(cfg.out) if cfg.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)  # fail before training, not after
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)

    d = task_data(
        cfg.task,
        cfg.split,
        test_fraction=cfg.test_fraction,
        onehot_only=cfg.uses_onehot_only(),
    )
    val = carve_validation(d, cfg.val_fraction, cfg.seed) if cfg.val_fraction else None
    flags = cfg.flags()
    init = {k: flags[k] for k in (*INIT_FLAGS, *FORWARD_FLAGS)}
    model = build(cfg.task, cfg.arch, cfg.kernel, cfg.width, coords=cfg.coords, **init)
    if cfg.init_onnx:
        model.load_state_dict(weights_from_onnx(cfg.init_onnx))
    # Channels-last: the small convolutions train 1.3-1.9x faster on a CPU (measured).
    model = model.to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay or 0.0
    )
    l2 = cfg.l2 or 0.0
    n_steps = cfg.epochs * math.ceil(len(d.x_train) / cfg.batch_size)
    # Cosine decay to zero: the last epochs settle instead of bouncing at the full rate.
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda step: (
            0.5 * (1 + math.cos(math.pi * min(step, n_steps) / max(n_steps, 1)))
            if cfg.cosine
            else 1.0
        ),
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    x_train, y_train = d.x_train.to(device), d.y_train.to(device)
    n = len(x_train)
    history: list[dict[str, float]] = []
    primary = primary_metric(cfg.task, cfg.arch, cfg.uses_onehot_only())
    # The learning curves' train metric comes from a fixed sample of the training set (evaluating
    # all of it every epoch would double the run time); the final metrics use every sample.
    probe = np.sort(np.random.default_rng(cfg.seed).permutation(n)[:HISTORY_PROBE])

    start = time.perf_counter()
    cpu0 = time.process_time()
    # CPU seconds of training alone: steadier than wall time on a shared machine
    trained_cpu = 0.0
    bar = tqdm(
        range(cfg.epochs),
        desc=f"{cfg.task}/{cfg.arch}/{cfg.split}",
        unit="epoch",
        disable=not cfg.progress,
        leave=False,
    )
    trained_s = 0.0  # training time alone: the evaluations below do not count
    streak = 0  # consecutive epochs at the goal (for stop_after_goal)
    stopped: dict[str, Any] | None = None
    for epoch in bar:
        model.train()
        total, t0, c0 = 0.0, time.perf_counter(), time.process_time()
        order = torch.randperm(n, generator=gen).to(device)
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = loss_fn(cfg.task, model, x_train[idx], y_train[idx], flags)
            if l2:
                loss = loss + l2 * l2_penalty(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        if cfg.bn_recalibrate:
            # Counted as training time: without it the batch-norm nets' evaluations measure
            # running averages that lag behind the weights, not what was learned.
            t1 = time.perf_counter()
            recalibrate_bn(model, d.x_train)
            seconds += time.perf_counter() - t1
        trained_s += seconds
        trained_cpu += time.process_time() - c0
        tr = evaluate(cfg.task, model, d.x_train[probe], d.y_train[probe], d.kinds_train[probe])
        te = evaluate(cfg.task, model, d.x_test, d.y_test, d.kinds_test)
        entry: dict[str, Any] = {
            "epoch": epoch + 1,
            "time_s": round(trained_s, 2),
            "cpu_s": round(trained_cpu, 2),
            "loss": total / n,
            "train": tr[primary],
            "test": te[primary],
            "goal": goal_met(cfg.task, te, cfg.arch),
        }
        if val is not None:
            entry["val"] = evaluate(cfg.task, model, *val)[primary]
        history.append(entry)
        bar.set_postfix(
            loss=f"{total / n:.4f}",
            train=f"{tr[primary]:.4f}",
            test=f"{te[primary]:.4f}",
            rate=f"{n / seconds:.0f}/s",
        )
        streak = streak + 1 if entry["goal"] else 0
        if cfg.stop_after_goal and streak >= cfg.stop_after_goal and epoch + 1 < cfg.epochs:
            stopped = {
                "epoch": epoch + 1,
                "why": f"stopped early: the goal met on {streak} consecutive epochs",
            }
            break
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0

    train_m = evaluate(cfg.task, model, d.x_train, d.y_train, d.kinds_train)
    test_m = evaluate(cfg.task, model, d.x_test, d.y_test, d.kinds_test)
    result: dict[str, Any] = {
        "task": cfg.task,
        "arch": cfg.arch,
        "split": cfg.split,
        "seed": cfg.seed,
        "parameters": count_parameters(model),
        "epochs": cfg.epochs,
        "epochs_run": len(history),
        "stopped_early": stopped,  # None: ran its whole budget
        "wall_time_s": round(wall, 2),
        "train_time_s": round(trained_s, 2),
        "cpu_time_s": round(cpu, 2),  # evaluations included
        "train_cpu_s": round(trained_cpu, 2),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": device_name(device),
        "flush_denormal": flush_denormal,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "progress")},
        "settings": cfg.recipe_defaults(),
        "n_val": 0 if val is None else len(val[0]),
        "train": train_m,
        "test": test_m,
        "n_train": len(d.x_train),
        "n_test": len(d.x_test),
        "goal": GOALS["coordconv906" if cfg.uses_onehot_only() else cfg.task],
        "metric": primary,
        "goal_met": goal_met(cfg.task, test_m, cfg.arch),
        # render: the value bound the test images fail, one line (None: none fails)
        "goal_refused": goal_refused(cfg.task, test_m),
        "to_goal": to_goal(history),
        "to_best": to_best(history, higher_is_better(primary)),
        "fits_train": fits(cfg.task, train_m),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "history": history,
    }
    if result["goal_refused"]:
        print(
            f"{cfg.task}/{cfg.arch}/{cfg.split} seed {cfg.seed}: goal refused: "
            f"test {result['goal_refused']}",
            file=sys.stderr,
        )
    if out is not None:
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        torch.save(model.state_dict(), out / "model.pt")
        (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def carve_validation(
    d: TaskData, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Move a seeded `fraction` of the training set into a validation set (in place on `d`):
    what configurations and epochs are chosen on, so the test set is never used to choose."""
    n = len(d.x_train)
    perm = np.random.default_rng(10_000 + seed).permutation(n)
    n_val = max(1, round(fraction * n))
    v, t = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    val = (d.x_train[v], d.y_train[v], d.kinds_train[v])
    d.x_train, d.y_train, d.kinds_train = d.x_train[t], d.y_train[t], d.kinds_train[t]
    return val


def load_run(run_dir: str | Path) -> tuple[CoordNet, TrainConfig, dict[str, Any]]:
    """The trained model (eval mode, CPU), its config and metrics from a run folder."""
    run = Path(run_dir)
    for name in ("config.json", "model.pt", "metrics.json"):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run}: not a run folder ({name} is missing)")
    raw = json.loads((run / "config.json").read_text())
    known = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(**{k: v for k, v in raw.items() if k in known})
    cfg.without = tuple(cfg.without)
    cfg.plus = tuple(cfg.plus)
    metrics_json = json.loads((run / "metrics.json").read_text())
    # A run made before these were switches scaled its inputs and output (every recipe did).
    settings = metrics_json.get("settings", {})
    forward = {k: bool(settings.get(k, True)) for k in FORWARD_FLAGS}
    model = build(cfg.task, cfg.arch, cfg.kernel, cfg.width, coords=cfg.coords, **forward)
    model.load_state_dict(torch.load(run / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    return model, cfg, metrics_json
