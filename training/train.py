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
from training.nets import Arch, CoordConvRender, CoordNet, Task, build, count_parameters

# Per (task, arch): epochs, learning rate, minibatch, L2. CoordConv follows the paper (Adam,
# minibatch 16, lr 0.005, betas 0.9/0.99) with epochs cut to what a 2-core CPU does in about a
# minute, at a constant rate. The baselines get a budget of about 2.5 minutes each (the paper
# swept hyperparameters and trained deconv nets for up to 2000 epochs) and a cosine decay of the
# rate, without which they bounce around instead of fitting; the table states epochs and time.
DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("pixel", "coordconv"): {"epochs": 3, "lr": 0.005, "batch_size": 16, "cosine": False},
    ("render", "coordconv"): {"epochs": 5, "lr": 0.005, "batch_size": 16, "cosine": False},
    ("locate", "coordconv"): {"epochs": 3, "lr": 0.005, "batch_size": 16, "cosine": False},
    ("pixel", "baseline"): {"epochs": 100, "lr": 0.003, "batch_size": 32, "cosine": True},
    ("render", "baseline"): {"epochs": 100, "lr": 0.003, "batch_size": 32, "cosine": True},
    ("locate", "baseline"): {"epochs": 30, "lr": 0.001, "batch_size": 16, "cosine": True},
}

# The goals of the paper's CoordConv rows, judged on the test set.
GOALS = {"pixel": "accuracy = 100%", "render": "IoU >= 0.99", "locate": "error <= 0.5 px"}
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
        if self.arch not in ("coordconv", "baseline"):
            raise ValueError(f"unknown architecture {self.arch!r}; choose coordconv or baseline")
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
    task: Task, split: data.Split, seed: int = 0, test_fraction: float = 0.25
) -> TaskData:
    """pixel: coords -> flat pixel index; render: coords -> square masks;
    locate: square and one-hot images of the same centres -> coords."""
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
            return F.binary_cross_entropy_with_logits(logits, y) + aux
        return F.binary_cross_entropy_with_logits(model(x), y)
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
    return {
        "mean_error_px": float(err.mean()),
        "mean_error_px_square": float(err[kinds == "square"].mean()),
        "mean_error_px_onehot": float(err[kinds == "onehot"].mean()),
        "max_error_px": float(err.max()),
    }


def goal_met(task: str, m: dict[str, float]) -> bool:
    if task == "pixel":
        return m["accuracy"] >= 1.0
    if task == "render":
        return m["iou"] >= 0.99
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

    d = task_data(cfg.task, cfg.split, test_fraction=cfg.test_fraction)
    model = build(cfg.task, cfg.arch)
    if cfg.init_onnx:
        from training.export import weights_from_onnx

        model.load_state_dict(weights_from_onnx(cfg.init_onnx))
    model = model.to(device)
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
    primary = PRIMARY[cfg.task]
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
        rate = n / (time.perf_counter() - t0)
        tr = evaluate(cfg.task, model, d.x_train[probe], d.y_train[probe], d.kinds_train[probe])
        te = evaluate(cfg.task, model, d.x_test, d.y_test, d.kinds_test)
        history.append(
            {"epoch": epoch + 1, "loss": total / n, "train": tr[primary], "test": te[primary]}
        )
        bar.set_postfix(
            loss=f"{total / n:.4f}",
            train=f"{tr[primary]:.4f}",
            test=f"{te[primary]:.4f}",
            rate=f"{rate:.0f}/s",
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
        "device": str(device),
        "train": train_m,
        "test": test_m,
        "n_train": len(d.x_train),
        "n_test": len(d.x_test),
        "goal": GOALS[cfg.task],
        "goal_met": goal_met(cfg.task, test_m),
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
    model = build(cfg.task, cfg.arch)
    model.load_state_dict(torch.load(run / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    return model, cfg, json.loads((run / "metrics.json").read_text())
