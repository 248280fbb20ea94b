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
from training.train import PRIMARY, load_run, predict

COLORS = {"coordconv": "tab:blue", "baseline": "tab:orange", "coordconv906": "tab:green"}


def learning_curves(results: list[dict[str, Any]], path: Path) -> None:
    tasks = list(dict.fromkeys(r["task"] for r in results))
    splits = list(dict.fromkeys(r["split"] for r in results))
    fig, axes = plt.subplots(
        len(tasks), len(splits), figsize=(5 * len(splits), 3.2 * len(tasks)), squeeze=False
    )
    for i, task in enumerate(tasks):
        for j, split in enumerate(splits):
            ax = axes[i][j]
            for r in results:
                if (r["task"], r["split"], r["seed"]) != (task, split, 0):
                    continue
                if r["arch"] == "coordconv906":  # another metric (exact): in time_to_goal.png
                    continue
                epochs = [h["epoch"] for h in r["history"]]
                color = COLORS[r["arch"]]
                ax.plot(
                    epochs,
                    [h["train"] for h in r["history"]],
                    "--",
                    color=color,
                    label=f"{r['arch']} train",
                )
                ax.plot(
                    epochs,
                    [h["test"] for h in r["history"]],
                    "-",
                    color=color,
                    label=f"{r['arch']} test",
                )
            metric = PRIMARY[task]
            if task == "locate":
                ax.set_yscale("log")
            ax.set_title(f"{task} / {split}")
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric.replace("_", " "))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_grid(runs: Path, path: Path, split: str = "quadrant", n: int = 8) -> None:
    """Test-set renders: truth, CoordConv, baseline (rows) for n held-out centres (columns)."""
    _, test_idx = data.split_indices(split)  # type: ignore[arg-type]
    pick = test_idx[np.linspace(0, len(test_idx) - 1, n).astype(int)]
    pts = data.centres()[pick]
    rows = [("truth", data.squares(pts))]
    for arch in ("coordconv", "baseline"):
        run = runs / f"render-{arch}-{split}-s0"
        if run.exists():
            model, _, _ = load_run(run)
            rows.append((arch, predict(model, torch.from_numpy(pts))))
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
    fig.suptitle(f"render, {split} split: held-out test centres", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def locate_error_map(runs: Path, path: Path, split: str = "quadrant") -> None:
    """Error of each architecture for every centre's square, over the canvas."""
    c = data.centres()
    archs = [a for a in ("coordconv", "baseline") if (runs / f"locate-{a}-{split}-s0").exists()]
    if not archs:
        return
    fig, axes = plt.subplots(1, len(archs), figsize=(5 * len(archs), 4.2), squeeze=False)
    side = data.HIGH - data.LOW + 1
    extent = (data.LOW - 0.5, data.HIGH + 0.5, data.HIGH + 0.5, data.LOW - 0.5)
    for ax, arch in zip(axes[0], archs, strict=True):
        model, _, _ = load_run(runs / f"locate-{arch}-{split}-s0")
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
        ax.set_title(f"locate {arch}: mean {err.mean():.2f} px")
        ax.set_xlabel("x (column)")
        ax.set_ylabel("y (row)")
        fig.colorbar(im, ax=ax, label="error (px)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def time_to_goal(results: list[dict[str, Any]], path: Path) -> None:
    """Per row, CoordConv's time to goal (median over seeds, whiskers min to max) beside the best
    baseline's time to its best test metric, on a log axis: the paper's 150x claim."""
    rows: list[tuple[str, str, list[float], str]] = []
    keys = dict.fromkeys((r["task"], r["split"], r["arch"]) for r in results)
    for task, split, arch in keys:
        same = [r for r in results if (r["task"], r["split"], r["arch"]) == (task, split, arch)]
        if arch == "baseline":
            best = same[0].get("to_best")
            if best:
                rows.append((f"{task} / {split}", arch, [best["seconds"]], "to its best"))
        else:
            times = [r["to_goal"]["seconds"] for r in same if r.get("to_goal")]
            if times:
                reached = f"{len(times)} of {len(same)} seeds" if len(same) > 1 else "1 seed"
                rows.append((f"{task} / {split}", arch, times, f"to goal, {reached}"))
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(rows) + 1.2))
    for i, (_, arch, times, what) in enumerate(rows):
        mid = float(np.median(times))
        err = [[mid - min(times)], [max(times) - mid]]
        ax.barh(i, mid, color=COLORS[arch], xerr=err if len(times) > 1 else None, capsize=3)
        ax.text(max(times) * 1.15, i, f"{mid:.0f} s {arch} {what}", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(right=max(max(r[2]) for r in rows) * 12)
    ax.set_xlabel("training seconds (log scale)")
    ax.set_title("Time to goal: CoordConv (median, min-max) vs the best baseline to its best")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def all_plots(results: list[dict[str, Any]], runs: Path, out: Path) -> None:
    learning_curves(results, out / "learning_curves.png")
    time_to_goal(results, out / "time_to_goal.png")
    render_grid(runs, out / "renders_quadrant.png")
    locate_error_map(runs, out / "locate_error_map.png")
