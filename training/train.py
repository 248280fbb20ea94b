"""The training loop, top to bottom: data for a task, a network, Adam, a fixed number of epochs,
train and test metrics after every epoch, and a run folder with the checkpoint and metrics.

A run folder holds `config.json`, `model.pt` (the state dict) and `metrics.json` (final train and
test metrics, parameters, wall time, and the per-epoch history for learning curves).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from training import data, metrics
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

# Per (task, arch): epochs, learning rate, minibatch, L2. CoordConv follows the paper (Adam,
# minibatch 16, lr 0.005, betas 0.9/0.99, constant rate) with epochs cut to what reaches the goal
# on every seed with a margin (see results/reproduction.md: most seeds get there in one epoch).
# The 906-parameter regressor trains on one-hot pixels at a lower, decaying rate: its max pool
# sends gradient through one pixel per map, and a fast rate moves the max off the pixel. The
# baselines' settings here are fallbacks: `coordconv reproduce` takes the best of the
# hyperparameter search (training/search.py, results/baseline_search.md).
DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("pixel", "coordconv"): {"epochs": 2, "lr": 0.005, "batch_size": 16, "cosine": False},
    ("render", "coordconv"): {"epochs": 2, "lr": 0.005, "batch_size": 16, "cosine": False},
    ("locate", "coordconv"): {"epochs": 3, "lr": 0.005, "batch_size": 16, "cosine": False},
    ("pixel", "baseline"): {"epochs": 100, "lr": 0.003, "batch_size": 32, "cosine": True},
    ("render", "baseline"): {"epochs": 100, "lr": 0.003, "batch_size": 32, "cosine": True},
    ("locate", "baseline"): {"epochs": 30, "lr": 0.001, "batch_size": 16, "cosine": True},
    ("locate", "coordconv906"): {"epochs": 10, "lr": 0.001, "batch_size": 16, "cosine": True},
}

# The goals of the paper's CoordConv rows, judged on the test set.
GOALS = {
    "pixel": "accuracy = 100%",
    "render": "IoU >= 0.99",
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
    epochs: int | None = None  # None: DEFAULTS
    lr: float | None = None
    batch_size: int | None = None
    weight_decay: float | None = None
    cosine: bool | None = None  # cosine decay of the learning rate to zero
    kernel: int = 3  # the baselines' filter size (the paper's search)
    width: int = 1  # the baselines' width multiplier
    seed: int = 0
    init_onnx: str | None = None  # start from the weights of a model this project exported
    test_fraction: float = 0.25
    device: str = "auto"
    out: str | None = None
    progress: bool = True

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
        d = DEFAULTS[(self.task, self.arch)]
        cfg = TrainConfig(**{**asdict(self)})
        cfg.epochs = d["epochs"] if self.epochs is None else self.epochs
        cfg.lr = d["lr"] if self.lr is None else self.lr
        cfg.batch_size = d["batch_size"] if self.batch_size is None else self.batch_size
        cfg.weight_decay = 0.0 if self.weight_decay is None else self.weight_decay
        cfg.cosine = d["cosine"] if self.cosine is None else self.cosine
        if cfg.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {cfg.epochs}")
        if cfg.lr <= 0 or not math.isfinite(cfg.lr):
            raise ValueError(f"lr must be a positive number, got {cfg.lr}")
        if cfg.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {cfg.batch_size}")
        if self.arch == "coordconv906" and self.task != "locate":
            raise ValueError("the 906-parameter regressor is a locate network (--task locate)")
        return cfg


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


def render_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per-pixel sigmoid cross-entropy (the paper's) plus one minus the soft IoU, the metric
    itself. Cross-entropy averages over 4096 pixels, so a square drawn without its four corners
    (IoU 0.95) costs next to nothing and some seeds settled there; the IoU term makes those
    pixels count."""
    p = torch.sigmoid(logits)
    inter = (p * masks).sum(dim=(1, 2))
    union = (p + masks - p * masks).sum(dim=(1, 2))
    soft_iou = (inter / union.clamp_min(1e-6)).mean()
    return F.binary_cross_entropy_with_logits(logits, masks) + (1.0 - soft_iou)


def loss_fn(task: Task, model: CoordNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if task == "pixel":
        return F.cross_entropy(model(x).flatten(1), y)
    if task == "render":
        if isinstance(model, CoordConvRender):
            # Also supervise the intermediate map with the centre pixel: the painting layers then
            # start from the right pixel everywhere, the unseen quadrant included.
            logits, pixel_logits = model.forward_aux(x)
            target = data.CANVAS * x[:, 1].round().long() + x[:, 0].round().long()
            aux = F.cross_entropy(pixel_logits.flatten(1), target)
            # And teach the painter on the true centre pixel: early on the map it is given is
            # still diffuse, and painting from that alone drove some seeds' painters dead.
            onehot = F.one_hot(target, data.CANVAS * data.CANVAS).to(x.dtype)
            taught = model.paint(onehot.view(-1, 1, data.CANVAS, data.CANVAS)).squeeze(1)
            return render_loss(logits, y) + aux + render_loss(taught, y)
        return render_loss(model(x), y)
    if isinstance(model, CoordConvLocate):
        # The soft-argmax alone is content with a heatmap one pixel off whose mass spreads back
        # towards the centre, and 2 of 20 seeds settled on such a shifted map (1.41 px on train
        # and test alike). Cross-entropy on the true centre pixel names the peak directly.
        point, logits = model.forward_aux(x)
        target = data.CANVAS * y[:, 1].round().long() + y[:, 0].round().long()
        return F.mse_loss(point, y) + F.cross_entropy(logits.flatten(1), target)
    return F.mse_loss(model(x), y)


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
        return {"iou": metrics.mean_iou(pred, truth)}
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


def primary_metric(task: str, arch: str) -> str:
    """The metric a run is judged and plotted by."""
    return "exact" if arch == "coordconv906" else PRIMARY[task]


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
    """Epochs and training seconds until the test metric first reached the goal (None: never)."""
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


def goal_met(task: str, m: dict[str, float], arch: str = "coordconv") -> bool:
    if task == "pixel":
        return m["accuracy"] >= 1.0
    if task == "render":
        return m["iou"] >= 0.99
    if arch == "coordconv906":
        return m["exact"] >= 1.0
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
        onehot_only=cfg.arch == "coordconv906",
    )
    model = build(cfg.task, cfg.arch, cfg.kernel, cfg.width)
    if cfg.init_onnx:
        model.load_state_dict(weights_from_onnx(cfg.init_onnx))
    # Channels-last: the small convolutions train 1.3-1.9x faster on a CPU (measured).
    model = model.to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay or 0.0
    )
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
    primary = primary_metric(cfg.task, cfg.arch)
    # The learning curves' train metric comes from a fixed sample of the training set (evaluating
    # all of it every epoch would double the run time); the final metrics use every sample.
    probe = np.sort(np.random.default_rng(cfg.seed).permutation(n)[:HISTORY_PROBE])

    start = time.perf_counter()
    bar = tqdm(
        range(cfg.epochs),
        desc=f"{cfg.task}/{cfg.arch}/{cfg.split}",
        unit="epoch",
        disable=not cfg.progress,
        leave=False,
    )
    trained_s = 0.0  # training time alone: the evaluations below do not count
    for epoch in bar:
        model.train()
        total, t0 = 0.0, time.perf_counter()
        order = torch.randperm(n, generator=gen).to(device)
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = loss_fn(cfg.task, model, x_train[idx], y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        trained_s += seconds
        tr = evaluate(cfg.task, model, d.x_train[probe], d.y_train[probe], d.kinds_train[probe])
        te = evaluate(cfg.task, model, d.x_test, d.y_test, d.kinds_test)
        history.append(
            {
                "epoch": epoch + 1,
                "time_s": round(trained_s, 2),
                "loss": total / n,
                "train": tr[primary],
                "test": te[primary],
                "goal": goal_met(cfg.task, te, cfg.arch),
            }
        )
        bar.set_postfix(
            loss=f"{total / n:.4f}",
            train=f"{tr[primary]:.4f}",
            test=f"{te[primary]:.4f}",
            rate=f"{n / seconds:.0f}/s",
        )
    wall = time.perf_counter() - start

    train_m = evaluate(cfg.task, model, d.x_train, d.y_train, d.kinds_train)
    test_m = evaluate(cfg.task, model, d.x_test, d.y_test, d.kinds_test)
    result: dict[str, Any] = {
        "task": cfg.task,
        "arch": cfg.arch,
        "split": cfg.split,
        "seed": cfg.seed,
        "parameters": count_parameters(model),
        "epochs": cfg.epochs,
        "wall_time_s": round(wall, 2),
        "train_time_s": round(trained_s, 2),
        "device": str(device),
        "device_name": device_name(device),
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "progress")},
        "train": train_m,
        "test": test_m,
        "n_train": len(d.x_train),
        "n_test": len(d.x_test),
        "goal": GOALS[cfg.arch if cfg.arch == "coordconv906" else cfg.task],
        "goal_met": goal_met(cfg.task, test_m, cfg.arch),
        "to_goal": to_goal(history),
        "to_best": to_best(history, higher_is_better(primary)),
        "fits_train": fits(cfg.task, train_m),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "history": history,
    }
    if out is not None:
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        torch.save(model.state_dict(), out / "model.pt")
        (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def load_run(run_dir: str | Path) -> tuple[CoordNet, TrainConfig, dict[str, Any]]:
    """The trained model (eval mode, CPU), its config and metrics from a run folder."""
    run = Path(run_dir)
    for name in ("config.json", "model.pt", "metrics.json"):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run}: not a run folder ({name} is missing)")
    raw = json.loads((run / "config.json").read_text())
    known = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(**{k: v for k, v in raw.items() if k in known})
    model = build(cfg.task, cfg.arch, cfg.kernel, cfg.width)
    model.load_state_dict(torch.load(run / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    return model, cfg, json.loads((run / "metrics.json").read_text())
