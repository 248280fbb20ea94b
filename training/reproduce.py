"""Reproduce the paper's table: 3 tasks x 2 splits, CoordConv against the best baselines, plus
the paper's 906-parameter regressor, then plots.

CoordConv rows run over `seeds` seeds (0..seeds-1, fixed before any result was seen); the table
shows seed 0 and the min / median / max over the seeds, and counts the seeds that reached the
goal. Baselines run once (seed 0) with the configuration the hyperparameter search chose
(`training.search`, cached in results/baseline_search.json). Every run records when its test
metric first reached the goal (time to goal) and when it reached its best (time to best): the
paper's "about 150x faster training" is the ratio of the two.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from training import search as searching
from training.nets import ARCHS, TASKS, Arch, Task
from training.train import (
    GOALS,
    TrainConfig,
    format_metric,
    higher_is_better,
    primary_metric,
    train,
)

SPLITS = ("uniform", "quadrant")

# The paper's figure for each row, to read the table against (REFERENCE: Liu et al. 2018 and a
# third-party reproduction of the baselines).
PAPER: dict[tuple[str, str, str], str] = {
    ("pixel", "uniform", "coordconv"): "100%",
    ("pixel", "quadrant", "coordconv"): "100%",
    ("pixel", "uniform", "baseline"): "about 86%",
    ("pixel", "quadrant", "baseline"): "about 0%",
    ("render", "uniform", "coordconv"): "perfect",
    ("render", "quadrant", "coordconv"): "perfect",
    ("render", "uniform", "baseline"): "IoU < 0.83",
    ("render", "quadrant", "baseline"): "IoU < 0.36",
    ("locate", "uniform", "coordconv"): "perfect",
    ("locate", "quadrant", "coordconv"): "perfect",
    ("locate", "uniform", "baseline"): "47.7% exact",
    ("locate", "quadrant", "baseline"): "7.1% exact",
    ("locate", "uniform", "coordconv906"): "perfect (one-hot)",
    ("locate", "quadrant", "coordconv906"): "perfect (one-hot)",
}


def report_only(
    out: str | Path = "results", runs: str | Path = "runs/reproduce", plots: bool = True
) -> None:
    """Rewrite reproduction.md (and the plots) from reproduction.json, without training."""
    out, runs = Path(out), Path(runs)
    summary = json.loads((out / "reproduction.json").read_text())
    (out / "reproduction.md").write_text(markdown_table(summary))
    if plots:
        from training import plots as plotting

        plotting.all_plots(summary["runs"], runs, out)


def run_name(task: str, arch: str, split: str, seed: int) -> str:
    return f"{task}-{arch}-{split}-s{seed}"


def rows(
    tasks: Sequence[Task], archs: Sequence[Arch], splits: Sequence[str]
) -> list[tuple[Task, str, Arch]]:
    """(task, split, arch) of every row, in table order; the 906-parameter regressor is a locate
    row of its own."""
    out: list[tuple[Task, str, Arch]] = []
    for task in tasks:
        for split in splits:
            for arch in archs:
                if arch != "coordconv906" or task == "locate":
                    out.append((task, split, arch))
    return out


def reproduce(
    out: str | Path = "results",
    runs: str | Path = "runs/reproduce",
    seeds: int = 10,
    tasks: Sequence[Task] = TASKS,
    archs: Sequence[Arch] = ARCHS,
    splits: Sequence[str] = SPLITS,
    device: str = "auto",
    progress: bool = True,
    plots: bool = True,
    reuse: bool = False,
    search: bool = False,
    search_fn: Callable[..., dict[str, Any]] = searching.run_search,
) -> dict[str, Any]:
    out, runs = Path(out), Path(runs)
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    search_runs = runs.parent / "search"
    start = time.perf_counter()
    best: dict[str, dict[str, Any]] = {}
    found = None
    searched_s = 0.0
    if "baseline" in archs:
        found = None if search else searching.load(out)
        missing = [t for t in tasks if found is None or t not in searching.best_configs(found)]
        if search or missing:
            print(f"reproduce: searching the baselines' hyperparameters ({', '.join(missing)})")
            found = search_fn(out, search_runs, missing or tasks, device, progress)
            searched_s = found["wall_time_s"]
        best = searching.best_configs(found)
    results: list[dict[str, Any]] = []
    reused_runs = 0
    for task, split, arch in rows(tasks, archs, splits):
        for seed in range(1 if arch == "baseline" else seeds):
            name = run_name(task, arch, split, seed)
            cached = runs / name / "metrics.json"
            overrides = best.get(task, {}) if arch == "baseline" else {}
            from_search = arch == "baseline" and split == "uniform" and found is not None
            if from_search:
                # The search already trained the winner on this split with this seed.
                assert found is not None
                cached = search_runs / searching.best(found["trials"], task)["run"] / "metrics.json"
            if (reuse or from_search) and cached.is_file():
                r = json.loads(cached.read_text())
                config = r.get("config", {})
                if all(config.get(k) == v for k, v in overrides.items()):
                    r["run"] = name
                    results.append(r)
                    reused_runs += not from_search
                    _report(name, r, "reused")
                    continue
            r = train(
                TrainConfig(
                    task=task,
                    arch=arch,
                    split=split,  # type: ignore[arg-type]
                    seed=seed,
                    device=device,
                    out=str(runs / name),
                    progress=progress,
                    **overrides,
                )
            )
            r["run"] = name
            results.append(r)
            _report(name, r, "trained")
    wall = time.perf_counter() - start
    coordconv = [r for r in results if r["arch"] != "baseline"]
    summary = {
        "seeds": seeds,
        "wall_time_s": round(wall, 1),
        "search_time_s": searched_s,  # within wall_time_s: 0 when the cached search was reused
        "search_cached_s": found["wall_time_s"] if found and not searched_s else 0.0,
        "reused_runs": reused_runs,  # --reuse: runs of an earlier invocation, not timed here
        "coordconv_seed0_time_s": round(sum(r["wall_time_s"] for r in coordconv if r["seed"] == 0)),
        "coordconv_time_s": round(sum(r["wall_time_s"] for r in coordconv)),
        "baseline_configs": best,
        "runs": results,
    }
    (out / "reproduction.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "reproduction.md").write_text(markdown_table(summary))
    if plots:
        from training import plots as plotting

        plotting.all_plots(results, runs, out)
    print(
        f"reproduce: {len(results)} runs in {wall:.0f}s (CoordConv rows: seed 0 "
        f"{summary['coordconv_seed0_time_s']}s, all {seeds} seeds {summary['coordconv_time_s']}s)"
        f"; wrote {out}/reproduction.md"
    )
    return summary


def _report(name: str, r: dict[str, Any], how: str) -> None:
    m = primary_metric(r["task"], r["arch"])
    print(
        f"{name:<36} {how} {r['wall_time_s']:7.1f}s  train {m} {r['train'][m]:.4f}"
        f"  test {m} {r['test'][m]:.4f}  goal {'met' if r['goal_met'] else 'missed'}",
        flush=True,
    )


def fmt(r: dict[str, Any], m: dict[str, float]) -> str:
    """A run's metric as the table shows it."""
    if r["arch"] == "coordconv906":
        return f"{100 * m['exact']:.1f}% exact"
    if r["task"] == "pixel":
        return f"{100 * m['accuracy']:.1f}%"
    if r["task"] == "render":
        return f"IoU {m['iou']:.3f}"
    px = f"{m['mean_error_px_square']:.2f} / {m['mean_error_px_onehot']:.2f} px"
    return f"{px}, {100 * m['exact']:.0f}% exact" if "exact" in m else px


def _verdict(r: dict[str, Any]) -> str:
    if r["goal_met"]:
        return "meets the goal"
    if not r["fits_train"]:
        return "**underfit** (misses on its training set too)"
    m = primary_metric(r["task"], r["arch"])
    train, test = r["train"][m], r["test"][m]
    gap = (train - test) if higher_is_better(m) else (test - train)
    if gap > (0.05 if higher_is_better(m) else 1.0):
        return "fits train, **fails to generalize**"
    return "below the goal on train and test alike"


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def _to_goal(same: list[dict[str, Any]]) -> str:
    """Median time to goal over the seeds (and its epochs), or the time to the best."""
    reached = [r["to_goal"] for r in same if r.get("to_goal")]
    if len(reached) == len(same):
        secs = statistics.median(t["seconds"] for t in reached)
        epochs = statistics.median(t["epochs"] for t in reached)
        return f"{_seconds(secs)} ({epochs:g} ep)"
    b = same[0].get("to_best")
    never = "never" if len(same) == 1 else f"{len(same) - len(reached)}/{len(same)} never"
    if b is None:
        return never
    best = format_metric(same[0]["task"], same[0]["arch"], b["test"])
    return f"{never}; best {best} at {_seconds(b['seconds'])} ({b['epochs']} ep)"


def _spread(same: list[dict[str, Any]]) -> str:
    if len(same) == 1:
        return "(one seed)"
    m = primary_metric(same[0]["task"], same[0]["arch"])
    ordered = sorted(same, key=lambda r: r["test"][m])
    lo, mid, hi = ordered[0], ordered[len(ordered) // 2], ordered[-1]
    if len(ordered) % 2 == 0:  # the median of an even count: the mean of the middle two
        a, b = ordered[len(ordered) // 2 - 1]["test"], ordered[len(ordered) // 2]["test"]
        mid = {**mid, "test": {k: (a[k] + b[k]) / 2 for k in a if k in b}}
    return " / ".join(fmt(r, r["test"]) for r in (lo, mid, hi))


def groups(runs: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        out.setdefault((r["task"], r["split"], r["arch"]), []).append(r)
    for same in out.values():
        same.sort(key=lambda r: r["seed"])
    return out


def _per_seed(runs: list[dict[str, Any]]) -> list[str]:
    seeds = sorted({r["seed"] for r in runs})
    lines = [
        "",
        "## Every seed",
        "",
        "CoordConv test metrics per seed (seeds fixed before any result was seen; misses in bold):",
        "",
        "| task | split | architecture | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|---|---|" + "---|" * len(seeds),
    ]
    for (task, split, arch), same in groups(runs).items():
        if arch == "baseline":
            continue
        cells = [fmt(r, r["test"]) if r["goal_met"] else f"**{fmt(r, r['test'])}**" for r in same]
        lines.append(f"| {task} | {split} | {arch} | " + " | ".join(cells) + " |")
    return lines


def _time_to_goal(runs: list[dict[str, Any]]) -> list[str]:
    g = groups(runs)
    lines = [
        "",
        "## Time to goal",
        "",
        "Training time (evaluations excluded) until the test metric first reached the goal, the "
        "median over CoordConv's seeds, beside the time the best baseline took to reach its best "
        "test metric. A baseline that never reaches the goal makes the ratio a lower bound. The "
        "paper reports CoordConv training about 150x faster. Plot: `time_to_goal.png`.",
        "",
        "| task | split | architecture | to goal | baseline to its best | baseline's best test "
        "| ratio |",
        "|---|---|---|---:|---:|---|---:|",
    ]
    for (task, split, arch), same in g.items():
        base = g.get((task, split, "baseline"))
        if arch == "baseline" or not base or not all(r.get("to_goal") for r in same):
            continue
        cc = statistics.median(r["to_goal"]["seconds"] for r in same)
        b = base[0]["to_best"]
        lines.append(
            f"| {task} | {split} | {arch} | {_seconds(cc)} | {_seconds(b['seconds'])} "
            f"({b['epochs']} ep) | {format_metric(task, 'baseline', b['test'])} "
            f"| {b['seconds'] / max(cc, 1e-9):.0f}x |"
        )
    return lines


def markdown_table(summary: dict[str, Any]) -> str:
    runs = summary["runs"]
    devices = sorted({r.get("device_name", r.get("device", "?")) for r in runs})
    took = _seconds(summary["wall_time_s"])
    if summary.get("search_time_s"):
        took += f", {_seconds(summary['search_time_s'])} of it the baselines' search"
    elif summary.get("search_cached_s"):
        took += f" (the cached baselines' search took {_seconds(summary['search_cached_s'])})"
    if summary.get("reused_runs"):
        took += (
            f", reusing {summary['reused_runs']} runs of an earlier invocation (`--reuse`; the"
            " times below are each run's own)"
        )
    head = [
        "# Reproduction of the CoordConv paper's toy tasks",
        "",
        f"Generated by `coordconv reproduce --seeds {summary['seeds']}` (`make reproduce`) in "
        f"{took}. CoordConv rows: "
        f"{_seconds(summary['coordconv_seed0_time_s'])} for one seed of all of them, "
        f"{_seconds(summary.get('coordconv_time_s', 0))} for all {summary['seeds']} seeds. "
        "Goals are the paper's CoordConv results on the test set: pixel 100% accuracy; render IoU "
        ">= 0.99; locate mean error <= 0.5 px on squares and on one-hot pixels (shown as "
        "`squares / one-hot`, and the share located to the right pixel, `exact`); the "
        "906-parameter regressor 100% exact (every one-hot pixel "
        "located to the right pixel). Baselines use the configuration of the hyperparameter "
        "search (`baseline_search.md`). The shipped models (`models/*/1`) are the quadrant "
        f"rows at seed 0 of an earlier recipe. Measured on: {'; '.join(devices)}.",
        "",
        "| task | split | architecture | parameters | epochs | training time | train | test "
        "(seed 0) | test min / median / max | paper | goal met | time to goal | verdict |",
        "|---|---|---|---:|---:|---:|---|---|---|---|---|---|---|",
    ]
    lines = []
    for (task, split, arch), same in groups(runs).items():
        r = same[0]
        met = sum(s["goal_met"] for s in same)
        lines.append(
            f"| {task} | {split} | {arch} | {r['parameters']:,} | {r['epochs']} "
            f"| {_seconds(r['wall_time_s'])} | {fmt(r, r['train'])} | {fmt(r, r['test'])} "
            f"| {_spread(same)} | {PAPER.get((task, split, arch), '')} | {met}/{len(same)} "
            f"| {_to_goal(same)} | {_verdict(r)} |"
        )
    ratios = ["", "Parameters, CoordConv vs baseline:", ""]
    for task in TASKS:
        p = {r["arch"]: r["parameters"] for r in runs if r["task"] == task}
        if "coordconv" in p and "baseline" in p:
            ratios.append(
                f"- {task}: {p['coordconv']:,} vs {p['baseline']:,} "
                f"({p['baseline'] / p['coordconv']:.1f}x fewer for CoordConv)"
            )
    goals = ", ".join(f"{k}: {v}" for k, v in GOALS.items())
    return (
        "\n".join([*head, *lines, *ratios, *_time_to_goal(runs), *_per_seed(runs)])
        + f"\n\nGoals: {goals}.\n"
    )
