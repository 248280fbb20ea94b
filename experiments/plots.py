"""Plots for results/: learning curves, test-set renders next to the truth, a map of the locate
error over the canvas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import torch

from training import data, metrics
from training.metrics import PRIMARY
from training.train import load_run, predict

COLORS = {"paper": "tab:red", "ours": "tab:blue", "baseline": "tab:orange", "locate": "tab:green"}
SEED = 10  # the first fresh seed: the one the curves and pictures show


def _run(records: list[dict[str, Any]], block: str, **match: Any) -> dict[str, Any] | None:
    for r in records:
        if (
            r.get("block") == block
            and all(r.get(k) == v for k, v in match.items())
            and not r["config"].get("without")
            and r["config"].get("coords", True)
        ):
            return r
    return None


def learning_curves(records: list[dict[str, Any]], path: Path, seed: int = SEED) -> None:
    """Train (dashed) and test (solid) metric per epoch, seed `seed`: the paper's recipe, ours,
    and the baseline, per task and split."""
    rows = [("pixel", "coordconv"), ("render", "coordconv"), ("locate", "coordconv906")]
    splits = ("uniform", "quadrant")
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 3.2 * len(rows)), squeeze=False)
    for i, (task, arch) in enumerate(rows):
        for j, split in enumerate(splits):
            ax = axes[i][j]
            for block in ("paper", "ours", "baseline"):
                r = _run(
                    records,
                    block,
                    task=task,
                    arch="baseline" if block == "baseline" else arch,
                    split=split,
                    seed=seed,
                )
                if r is None:
                    continue
                epochs = [h["epoch"] for h in r["history"]]
                c = COLORS[block]
                ax.plot(epochs, [h["train"] for h in r["history"]], "--", color=c, lw=1)
                ax.plot(epochs, [h["test"] for h in r["history"]], "-", color=c, label=block)
            metric = "exact (one-hot)" if arch == "coordconv906" else PRIMARY[task]
            ax.set_title(f"{task} / {split} (seed {seed}; dashed: train)", fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric.replace("_", " "))
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reference_curves(records: list[dict[str, Any]], path: Path) -> bool:
    """Block `reference`: the paper recipe at the reference's own budget, test metric per epoch
    for every seed (thin) and the goal (dotted), per row and split: when each seed first reaches
    the goal, and whether it stays there. False (nothing drawn) before the block has a run."""
    rows = [("pixel", "coordconv"), ("locate", "coordconv906"), ("render", "coordconv")]
    ref = [r for r in records if r.get("block") == "reference"]
    if not ref:
        return False
    splits = ("uniform", "quadrant")
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 2.9 * len(rows)), squeeze=False)
    goal = {"pixel": 1.0, "render": 0.99, "locate": 1.0}
    for i, (task, arch) in enumerate(rows):
        for j, split in enumerate(splits):
            ax = axes[i][j]
            runs = sorted(
                (r for r in ref if (r["task"], r["arch"], r["split"]) == (task, arch, split)),
                key=lambda r: r["seed"],
            )
            for r in runs:
                epochs = [h["epoch"] for h in r["history"]]
                ax.plot(epochs, [h["test"] for h in r["history"]], lw=1, label=f"s{r['seed']}")
            ax.axhline(goal[task], color="black", ls=":", lw=1)
            metric = "exact (one-hot)" if arch == "coordconv906" else PRIMARY[task]
            ax.set_title(f"{task}/{arch}, {split}: the paper recipe, test", fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric.replace("_", " "))
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if runs:
                ax.legend(fontsize=6, ncol=5, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def train_vs_test(records: list[dict[str, Any]], path: Path) -> None:
    """The paper's scatter: one point per deconv configuration trained (the validation search),
    final train metric against final test metric, per task and split."""
    panels = [(t, sp) for t in ("pixel", "render") for sp in ("uniform", "quadrant")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.8), squeeze=False)
    for ax, (task, split) in zip(axes[0], panels, strict=True):
        pts = [
            (r["train"][PRIMARY[task]], r["test"][PRIMARY[task]], r["config"])
            for r in records
            if r.get("block") == "search" and r["task"] == task and r["split"] == split
        ]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="tab:orange", s=22)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"train {PRIMARY[task]}")
        ax.set_ylabel(f"test {PRIMARY[task]}")
        ax.set_title(f"deconv {task} / {split}: {len(pts)} configurations", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle("Deconv baselines: final train vs test, one point per configuration searched")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def render_grid(runs: Path, path: Path, split: str = "quadrant", n: int = 8) -> None:
    """Test-set renders: truth, then each recipe's model and the baseline (rows), seed 10, for n
    held-out centres (columns)."""
    _, test_idx = data.split_indices(split)  # type: ignore[arg-type]
    pick = test_idx[np.linspace(0, len(test_idx) - 1, n).astype(int)]
    pts = data.centres()[pick]
    rows = [("truth", data.squares(pts))]
    for block, arch in (("paper", "coordconv"), ("ours", "coordconv"), ("baseline", "baseline")):
        run = runs / block / f"render-{arch}-{split}-s{SEED}"
        if (run / "model.pt").is_file():
            model, _, _ = load_run(run)
            rows.append((f"{block}", predict(model, torch.from_numpy(pts))))
    if len(rows) == 1:
        return
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.75 * len(rows)), squeeze=False)
    for i, (label, imgs) in enumerate(rows):
        for j in range(n):
            ax = axes[i][j]
            ax.imshow(imgs[j], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"({pts[j, 0]:.0f}, {pts[j, 1]:.0f})", fontsize=8)
            else:
                ax.set_title(
                    f"IoU {metrics.iou(imgs[j : j + 1], rows[0][1][j : j + 1])[0]:.2f}", fontsize=8
                )
            if j == 0:
                ax.set_ylabel(label)
    fig.suptitle(f"render, {split} split: held-out test centres (seed {SEED})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def locate_error_map(runs: Path, path: Path, split: str = "quadrant") -> None:
    """Error of the heatmap locate net with and without coordinate channels, for every centre's
    square, over the canvas (seed 10)."""
    c = data.centres()
    panels = [
        (label, runs / block / name)
        for label, block, name in (
            ("with coordinate channels", "ours", f"locate-coordconv-{split}-s{SEED}"),
            ("without", "locate", f"locate-coordconv-{split}-nocoords-s{SEED}"),
        )
        if (runs / block / name / "model.pt").is_file()
    ]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    side = data.HIGH - data.LOW + 1
    extent = (data.LOW - 0.5, data.HIGH + 0.5, data.HIGH + 0.5, data.LOW - 0.5)
    for ax, (label, run) in zip(axes[0], panels, strict=True):
        model, _, _ = load_run(run)
        err = metrics.errors_px(predict(model, torch.from_numpy(data.squares(c))), c)
        im = ax.imshow(
            err.reshape(side, side),
            extent=extent,
            cmap="magma",
            vmin=0,
            vmax=max(1.0, float(err.max())),
        )
        if split == "quadrant":
            q = data.QUADRANT_EDGE + 0.5
            ax.plot(
                [q, data.HIGH + 0.5, data.HIGH + 0.5, q, q],
                [q, q, data.HIGH + 0.5, data.HIGH + 0.5, q],
                "c-",
                lw=1.5,
                label="held-out quadrant",
            )
            ax.legend(loc="lower left", fontsize=7)
        ax.set_title(f"locate, {label}: mean {err.mean():.2f} px", fontsize=9)
        ax.set_xlabel("x (column)")
        ax.set_ylabel("y (row)")
        fig.colorbar(im, ax=ax, label="error (px)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def time_to_goal(summary: dict[str, Any], path: Path) -> None:
    """Per claim and split: the median training CPU seconds to the goal of the paper's recipe,
    ours and the baseline over their runs that met it (n of runs beside), on a log axis."""
    bars: list[tuple[str, str, float, str]] = []
    for c in summary["claims"]:
        for block, key in (("paper", "paper_recipe"), ("ours", "ours")):
            t = c[key]["time_to_goal"]
            if t.get("met"):
                secs = t.get("median_cpu_s") or t["median_wall_s"]
                label = f"{c['task']}/{c['arch']}/{c['split']}"
                bars.append((label, block, secs, f"{t['met']}/{t['runs']} met"))
    for b in summary["baselines"]:
        t = b["time_to_goal"]
        if t.get("met"):
            secs = t.get("median_cpu_s") or t["median_wall_s"]
            bars.append(
                (
                    f"{b['task']}/baseline/{b['split']}",
                    "baseline",
                    secs,
                    f"{t['met']}/{t['runs']} met",
                )
            )
    if not bars:
        return
    fig, ax = plt.subplots(figsize=(8, 0.36 * len(bars) + 1.2))
    for i, (_, block, secs, what) in enumerate(bars):
        ax.barh(i, secs, color=COLORS[block])
        ax.text(secs * 1.1, i, f"{secs:.0f} s {block}, {what}", va="center", fontsize=7)
    ax.set_yticks(range(len(bars)))
    ax.set_yticklabels([b[0] for b in bars], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(right=max(b[2] for b in bars) * 20)
    ax.set_xlabel("training CPU seconds to the goal, median over the runs that met it")
    ax.set_title("Time to goal (rows whose runs never met it are left out)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def all_plots(records: list[dict[str, Any]], runs: Path, out: Path) -> None:
    import json

    learning_curves(records, out / "learning_curves.png")
    reference_curves(records, out / "reference_curves.png")
    train_vs_test(records, out / "train_vs_test.png")
    summary = json.loads((out / "reproduction.json").read_text())
    time_to_goal(summary, out / "time_to_goal.png")
    render_grid(runs, out / "renders_quadrant.png")
    locate_error_map(runs, out / "locate_error_map.png")
