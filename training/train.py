"""The training loop, top to bottom: a config that states every knob, the losses, data for a task
(training.data), a network (training.nets), Adam, a fixed number of epochs, train and test
metrics after every epoch (training.metrics: the goals), and a run folder with the checkpoint and
metrics. The recipes that fill the config in (the paper's and ours) are experiments/recipe.py.

A run folder holds `config.json`, `model.pt` (the state dict) and `metrics.json` (final train and
test metrics, parameters, wall time, and the per-epoch history for learning curves). While a run
trains, `checkpoint.pt` holds everything after its last finished epoch (weights, optimiser, the
shuffling generator, the history): `train(config, resume=True)` (`coordconv train --resume`, and
the campaign always) continues a killed run from there to the same figures it would have reached
unbroken; it is removed once the run is written.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from training import data, metrics
from training.cpu import keep_freed_memory
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
# What a recipe decides (experiments/recipe.py): the optimiser's numbers and every switch.
KNOBS = ("epochs", "lr", "batch_size", "l2", "cosine", *INIT_FLAGS, *LOSS_FLAGS, *FORWARD_FLAGS)

HISTORY_PROBE = 512


@dataclass
class TrainConfig:
    """Everything one run needs, stated outright: what to train (task, net, split, seed) and how
    (the optimiser's numbers and one switch per change the recipes make). `experiments.recipe`
    fills one in for the paper's recipe or ours (`train_config`); `recipe`, `without` and `plus`
    record which it was, for the run's record: the loop reads none of the three."""

    task: Task = "pixel"
    arch: Arch = "coordconv"
    split: data.Split = "quadrant"
    seed: int = 0
    # The optimiser: Adam (betas 0.9 / 0.99), a fixed number of epochs.
    epochs: int = 5
    lr: float = 0.005
    batch_size: int = 16
    l2: float = 0.0  # lambda of lambda * sum(kernel ** 2), added to the loss
    weight_decay: float = 0.0  # Adam's coupled decay (the recipes use l2)
    cosine: bool = False  # cosine decay of the learning rate to zero (else constant)
    # How the net starts (experiments/recipe.py says what each switch does).
    torch_init: bool = False  # PyTorch's default init (else he_normal kernels, zero biases)
    offset_init: bool = False
    spread_init: bool = False
    zero_coord_init: bool = False
    zero_bias_init: bool = False
    peak_init: bool = False
    # What it computes, at its edges.
    unit_inputs: bool = False  # pixel/render: the tiled point in [-1, 1] (else raw pixels)
    unit_output: bool = False  # 906: the output read in [-1, 1] (else as pixels / 64)
    # The loss's extra terms.
    pixel_aux: bool = False
    taught_painter: bool = False
    iou_loss: bool = False
    heatmap_ce: bool = False
    pixel_mse: bool = False  # locate: MSE in pixels (else on coordinates / 64, the reference's)
    # The data and the net.
    coords: bool = True  # locate heatmap net: False drops its coordinate channels
    onehot_only: bool | None = None  # locate on one-hot images only (None: for coordconv906)
    val_fraction: float = 0.0  # carve a validation set from the training set (seeded)
    bn_recalibrate: bool = True  # batch norm: statistics recomputed on the training set
    kernel: int = 3  # the baselines' filter size (the paper's search)
    width: int = 1  # the baselines' width multiplier
    init_onnx: str | None = None  # start from the weights of a model this project exported
    test_fraction: float = 0.25
    # The run.
    device: str = "auto"
    out: str | None = None
    progress: bool = True
    stop_after_goal: int = 0  # stop after this many consecutive epochs at the goal (0: never)
    # Which recipe set the values above (recorded, not read): "paper", "ours", or "" by hand.
    recipe: str = ""
    without: tuple[str, ...] = ()  # changes of `ours` turned off
    plus: tuple[str, ...] = ()  # changes added alone to `paper`

    def resolved(self) -> TrainConfig:
        """A validated copy (ValueError with one line for a value that cannot train)."""
        if self.task not in metrics.PRIMARY:
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
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.lr <= 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")
        if self.stop_after_goal < 0:
            raise ValueError(f"stop_after_goal must be >= 0, got {self.stop_after_goal}")
        return replace(self, without=tuple(self.without), plus=tuple(self.plus))

    def knobs(self) -> dict[str, Any]:
        """What a recipe decides (KNOBS), as the run's record keeps it (`settings`)."""
        return {k: getattr(self, k) for k in KNOBS}

    def flags(self, names: tuple[str, ...]) -> dict[str, bool]:
        return {k: bool(getattr(self, k)) for k in names}

    def uses_onehot_only(self) -> bool:
        return self.arch == "coordconv906" if self.onehot_only is None else self.onehot_only


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
    """The task's loss; `flags` (TrainConfig.flags(LOSS_FLAGS); default: every one on) turn
    the extra terms on or off: pixel_aux, taught_painter, iou_loss (render), heatmap_ce,
    pixel_mse."""
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
def recalibrate_bn(model: torch.nn.Module, x: torch.Tensor | np.ndarray, batch: int = 256) -> bool:
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
        model(torch.as_tensor(x[i : i + batch]).to(device))
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    model.train(was_training)
    return True


@torch.no_grad()
def predict(model: CoordNet, x: torch.Tensor | np.ndarray, batch: int = 64) -> np.ndarray:
    """The served outputs (`predict`, with softmax or sigmoid) as numpy, in chunks."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.as_tensor(x)
    out = [model.predict(x[i : i + batch].to(device)).cpu() for i in range(0, len(x), batch)]
    model.train(was_training)
    return torch.cat(out).numpy()


def evaluate(
    task: Task,
    model: CoordNet,
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    kinds: np.ndarray,
) -> dict[str, float]:
    """The task's metrics of `model` on (x, y): what metrics.goal_met judges."""
    pred = predict(model, x)
    truth = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
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


def device_name(device: torch.device) -> str:
    """What trained it, for the table: the GPU's name, or the CPU and its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import os

    return f"CPU, {len(os.sched_getaffinity(0))} cores, {torch.get_num_threads()} threads"


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


CHECKPOINT = "checkpoint.pt"


def _run_identity(cfg: TrainConfig) -> dict[str, Any]:
    """What a checkpoint must match to be continued: the whole config but where it is written
    and whether a bar is drawn."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("out", "progress")}


def _load_checkpoint(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    try:
        # On the CPU: the generators' states must be CPU tensors, and load_state_dict moves
        # weights and the optimiser's moments to wherever the model is.
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: say which, never train over it silently
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise ValueError(
            f"{path}: not a readable checkpoint ({why}); remove it to start over"
        ) from e
    if not isinstance(state, dict) or state.get("config") != _run_identity(cfg):
        raise ValueError(
            f"{path}: a checkpoint of other options than these; remove it to start over"
        )
    return state


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically: a run killed while writing keeps the previous epoch's checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train(config: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train one model; returns (and, with `out`, writes) its metrics. `resume`: continue from
    the checkpoint in `out` where a killed run left one (else start). Without it, an unfinished
    run's checkpoint in `out` is refused rather than trained over."""
    # Denormal floats (below 1.2e-38) are 10-100x slower on a CPU and change no metric: a
    # locate net whose heatmap grows sharp spent 321 s on one epoch with them, 30 s flushed to
    # zero, to the same figures; a whole `ours` render run (seed 18) gave the same figures
    # both ways too. Flushing is process-wide state: it is put back for whatever runs next.
    flush_denormal = torch.set_flush_denormal(True)
    keep_freed_memory()  # the kernel's page faults took most of a CPU run (training.cpu)
    try:
        return _train(config, flush_denormal, resume)
    finally:
        torch.set_flush_denormal(False)


def _train(config: TrainConfig, flush_denormal: bool, resume: bool) -> dict[str, Any]:
    cfg = config.resolved()
    out = Path(cfg.out) if cfg.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)  # fail before training, not after
    device = pick_device(cfg.device)
    checkpoint = out / CHECKPOINT if out is not None else None
    saved: dict[str, Any] | None = None
    if checkpoint is not None and checkpoint.is_file():
        if not resume:
            raise ValueError(
                f"{out} holds an unfinished run ({CHECKPOINT}): resume it (--resume), or remove "
                "it to start over"
            )
        saved = _load_checkpoint(checkpoint, cfg)
    seed_everything(cfg.seed)

    d = data.task_data(
        cfg.task,
        cfg.split,
        test_fraction=cfg.test_fraction,
        onehot_only=cfg.uses_onehot_only(),
    )
    val = data.carve_validation(d, cfg.val_fraction, cfg.seed) if cfg.val_fraction else None
    flags = cfg.flags(LOSS_FLAGS)
    init = cfg.flags((*INIT_FLAGS, *FORWARD_FLAGS))
    model = build(cfg.task, cfg.arch, cfg.kernel, cfg.width, coords=cfg.coords, **init)
    if cfg.init_onnx:
        model.load_state_dict(weights_from_onnx(cfg.init_onnx))
    # Channels-last: the small convolutions train 1.3-1.9x faster on a CPU (measured).
    model = model.to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay
    )
    l2 = cfg.l2
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
    x_train = torch.from_numpy(d.x_train).to(device)
    y_train = torch.from_numpy(d.y_train).to(device)
    n = len(x_train)
    history: list[dict[str, float]] = []
    primary = metrics.primary_metric(cfg.task, cfg.arch, cfg.uses_onehot_only())
    # The learning curves' train metric comes from a fixed sample of the training set (evaluating
    # all of it every epoch would double the run time); the final metrics use every sample.
    probe = np.sort(np.random.default_rng(cfg.seed).permutation(n)[:HISTORY_PROBE])

    start = time.perf_counter()
    cpu0 = time.process_time()
    # CPU seconds of training alone: steadier than wall time on a shared machine
    trained_cpu = 0.0
    trained_s = 0.0  # training time alone: the evaluations below do not count
    streak = 0  # consecutive epochs at the goal (for stop_after_goal)
    stopped: dict[str, Any] | None = None
    te: dict[str, float] = {}  # the last epoch's test metrics
    before_s = before_cpu = 0.0  # wall and CPU seconds of the processes before a resume
    resumed_at: list[int] = []  # the epochs after which a killed run was continued
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        gen.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        history, te, stopped = saved["history"], saved["last_test"], saved["stopped"]
        trained_s, trained_cpu, streak = saved["trained_s"], saved["trained_cpu"], saved["streak"]
        before_s, before_cpu = saved["wall_s"], saved["cpu_s"]
        resumed_at = [*saved["resumed_at"], len(history)]
    first = len(history)
    bar = tqdm(
        range(first, cfg.epochs if stopped is None else first),
        desc=f"{cfg.task}/{cfg.arch}/{cfg.split}",
        unit="epoch",
        initial=first,
        total=cfg.epochs,
        disable=not cfg.progress,
        leave=False,
    )
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
            "goal": metrics.goal_met(cfg.task, te, cfg.arch),
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
        if checkpoint is not None:
            _save_checkpoint(
                checkpoint,
                {
                    "config": _run_identity(cfg),
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                    "last_test": te,
                    "stopped": stopped,
                    "trained_s": trained_s,
                    "trained_cpu": trained_cpu,
                    "streak": streak,
                    "wall_s": before_s + time.perf_counter() - start,
                    "cpu_s": before_cpu + time.process_time() - cpu0,
                    "resumed_at": resumed_at,
                },
            )
        if stopped is not None:
            break
    wall = before_s + time.perf_counter() - start
    cpu = before_cpu + time.process_time() - cpu0

    train_m = evaluate(cfg.task, model, d.x_train, d.y_train, d.kinds_train)
    # The last epoch measured the whole test set on these very weights: not run again.
    test_m = te if history else evaluate(cfg.task, model, d.x_test, d.y_test, d.kinds_test)
    result: dict[str, Any] = {
        "task": cfg.task,
        "arch": cfg.arch,
        "split": cfg.split,
        "seed": cfg.seed,
        "parameters": count_parameters(model),
        "epochs": cfg.epochs,
        "epochs_run": len(history),
        "stopped_early": stopped,  # None: ran its whole budget
        "resumed_at": resumed_at,  # epochs after which a killed run was continued (times add up)
        "wall_time_s": round(wall, 2),
        "train_time_s": round(trained_s, 2),
        "cpu_time_s": round(cpu, 2),  # evaluations included
        "train_cpu_s": round(trained_cpu, 2),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": device_name(device),
        "flush_denormal": flush_denormal,
        "freed_memory_kept": keep_freed_memory(),  # False: CPU seconds not comparable
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "progress")},
        "settings": cfg.knobs(),
        "n_val": 0 if val is None else len(val[0]),
        "train": train_m,
        "test": test_m,
        "n_train": len(d.x_train),
        "n_test": len(d.x_test),
        "goal": metrics.GOALS["coordconv906" if cfg.uses_onehot_only() else cfg.task],
        "metric": primary,
        "goal_met": metrics.goal_met(cfg.task, test_m, cfg.arch),
        # render: the value bound the test images fail, one line (None: none fails)
        "goal_refused": metrics.goal_refused(cfg.task, test_m),
        "to_goal": metrics.to_goal(history),
        "to_best": metrics.to_best(history, metrics.higher_is_better(primary)),
        "fits_train": metrics.fits(cfg.task, train_m),
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
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)  # the run is written: nothing left to resume
    return result


def load_run(run_dir: str | Path) -> tuple[CoordNet, TrainConfig, dict[str, Any]]:
    """The trained model (eval mode, CPU), its config and metrics from a run folder."""
    run = Path(run_dir)
    for name in ("config.json", "model.pt", "metrics.json"):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run}: not a run folder ({name} is missing)")
    raw = json.loads((run / "config.json").read_text())
    known = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in raw.items() if k in known and v is not None})
    cfg = replace(cfg, without=tuple(cfg.without), plus=tuple(cfg.plus))
    metrics_json = json.loads((run / "metrics.json").read_text())
    # A run made before these were switches scaled its inputs and output (every recipe did).
    settings = metrics_json.get("settings", {})
    forward = {k: bool(settings.get(k, raw.get(k, True))) for k in FORWARD_FLAGS}
    model = build(cfg.task, cfg.arch, cfg.kernel, cfg.width, coords=cfg.coords, **forward)
    model.load_state_dict(torch.load(run / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    return model, cfg, metrics_json
