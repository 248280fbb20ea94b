"""The baselines' hyperparameter search: the paper's knobs (learning rate, filter size, width
multiplier, epochs) for the deconv classifier, the deconv renderer and the conv regressor, so the
table compares CoordConv with baselines at their best, not with a strawman.

Successive halving on the uniform split (the split a baseline can generalise on): every
configuration trains for the first rung's epochs, the best third of them again from scratch for
the second rung's, and the best one for the last (each run decays its rate to zero over its own
epochs). Runs are ranked by their test metric, as the paper's sweep picked its best: the choice
favours the baselines. The best configuration then trains on the quadrant split too, in
`training.reproduce`.

Its results are cached in `results/baseline_search.json` (and `.md`): `coordconv reproduce`
reuses them unless asked to search again (`--search`), since the search costs about half an hour
on a 2-core CPU.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.nets import TASKS, Task
from training.train import (
    TrainConfig,
    format_metric,
    higher_is_better,
    primary_metric,
    train,
)

# (kernel, width): the paper's filter sizes and width multipliers. The deconv nets take even
# kernels (4 upsamples without a checkerboard); the conv regressor keeps odd ones.
SPACE: dict[str, dict[str, Sequence[Any]]] = {
    "pixel": {"lr": (0.01, 0.003, 0.001), "shape": ((3, 1), (4, 1), (4, 2))},
    "render": {"lr": (0.01, 0.003, 0.001), "shape": ((3, 1), (4, 1), (4, 2))},
    "locate": {"lr": (0.003, 0.001, 0.0003), "shape": ((3, 1), (5, 1), (3, 2))},
}
# Epochs per rung; the last is the budget the winner trains for (the paper trained deconv nets for
# up to 2000 epochs on a GPU; these are what a 2-core CPU does in the time stated in the table).
RUNGS: dict[str, tuple[int, ...]] = {
    "pixel": (10, 30, 120),
    "render": (10, 30, 120),
    "locate": (4, 12, 30),
}
KEEP = 3  # configurations promoted from the first rung; one from the second
SEARCH_FILE = "baseline_search.json"


def configs(task: str) -> list[dict[str, Any]]:
    space = SPACE[task]
    return [
        {"lr": lr, "kernel": k, "width": w}
        for lr, (k, w) in itertools.product(space["lr"], space["shape"])
    ]


def _score(task: str, r: dict[str, Any]) -> float:
    m = primary_metric(task, "baseline")
    value: float = r["test"][m]
    return value if higher_is_better(m) else -value


def search_task(
    task: Task, runs: Path, device: str = "auto", progress: bool = True
) -> list[dict[str, Any]]:
    """Every trial of one task's search (dicts with the config, rung, metrics, times)."""
    trials: list[dict[str, Any]] = []
    alive = configs(task)
    rungs = RUNGS[task]
    for rung, epochs in enumerate(rungs):
        results = []
        for c in alive:
            name = f"{task}-lr{c['lr']}-k{c['kernel']}-w{c['width']}-e{epochs}"
            r = train(
                TrainConfig(
                    task=task,
                    arch="baseline",
                    split="uniform",
                    epochs=epochs,
                    cosine=True,
                    device=device,
                    out=str(runs / name),
                    progress=progress,
                    **c,
                )
            )
            r.pop("history")
            trial = {**c, "rung": rung, "run": name, **r}
            trials.append(trial)
            results.append(trial)
            m = primary_metric(task, "baseline")
            print(
                f"search {name:<34} {r['train_time_s']:6.0f}s  test {m} {r['test'][m]:.4f}",
                flush=True,
            )
        results.sort(key=lambda t: _score(task, t), reverse=True)
        keep = KEEP if rung == 0 else 1
        alive = [{k: t[k] for k in ("lr", "kernel", "width")} for t in results[:keep]]
    return trials


def best(trials: list[dict[str, Any]], task: str) -> dict[str, Any]:
    """The winner: the best trial of the last rung."""
    last = max(t["rung"] for t in trials if t["task"] == task)
    final = [t for t in trials if t["task"] == task and t["rung"] == last]
    return max(final, key=lambda t: _score(task, t))


def run_search(
    out: str | Path = "results",
    runs: str | Path = "runs/search",
    tasks: Sequence[Task] = TASKS,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    out, runs = Path(out), Path(runs)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    trials = [t for task in tasks for t in search_task(task, runs, device, progress)]
    # A search of some tasks keeps the cached trials of the others.
    kept = [t for t in (load(out) or {"trials": []})["trials"] if t["task"] not in tasks]
    summary = {
        "wall_time_s": round(time.perf_counter() - start, 1),
        "space": {t: {"lr": SPACE[t]["lr"], "shape": SPACE[t]["shape"]} for t in TASKS},
        "rungs": {t: RUNGS[t] for t in TASKS},
        "trials": sorted(kept + trials, key=lambda t: TASKS.index(t["task"])),
    }
    (out / SEARCH_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    (out / "baseline_search.md").write_text(markdown(summary))
    return summary


def load(out: str | Path = "results") -> dict[str, Any] | None:
    path = Path(out) / SEARCH_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def best_configs(summary: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per task, the winning TrainConfig fields (lr, kernel, width, epochs, cosine)."""
    if summary is None:
        return {}
    out = {}
    for task in dict.fromkeys(t["task"] for t in summary["trials"]):
        b = best(summary["trials"], task)
        out[task] = {
            "lr": b["lr"],
            "kernel": b["kernel"],
            "width": b["width"],
            "epochs": b["epochs"],
            "cosine": True,
        }
    return out


def _fmt(task: str, m: dict[str, float]) -> str:
    """A baseline run's metrics, by its primary metric."""
    return format_metric(task, "baseline", m[primary_metric(task, "baseline")])


def _best(task: str, t: dict[str, Any]) -> str:
    """The run's best test metric and the epoch it came at."""
    b = t.get("to_best")
    if not b:
        return ""
    value = format_metric(task, "baseline", b["test"])
    return f"{value} (epoch {b['epochs']})"


PAPER = {
    "pixel": "deconv: about 86% (uniform), about 0% (quadrant)",
    "render": "deconv: IoU below 0.83 (uniform), below 0.36 (quadrant)",
    "locate": "conv regression: 47.7% / 7.1% exact (third-party reproduction)",
}


def markdown(summary: dict[str, Any]) -> str:
    trials = summary["trials"]
    lines = [
        "# Baseline hyperparameter search",
        "",
        "Generated by `coordconv reproduce --search` (or `python -m training.search`) in "
        f"{summary['wall_time_s'] / 60:.0f} min; cached here and reused by `coordconv "
        "reproduce`. Successive halving on the uniform split: every configuration for the "
        "first rung's epochs, the best three for the second's, the best one for the last; each "
        "run decays its learning rate to zero over its epochs (Adam, betas 0.9/0.99). Ranked by "
        "the final test metric, as the paper's sweep picked its best (this favours the "
        "baselines); the last column is the best test metric of any epoch of the run. "
        f"Trained on {trials[0]['device_name'] if trials else '?'}.",
        "",
    ]
    for task in dict.fromkeys(t["task"] for t in trials):
        b = best(trials, task)
        lines += [
            f"## {task}",
            "",
            f"Rungs (epochs): {', '.join(map(str, summary['rungs'][task]))}. The paper: "
            f"{PAPER[task]}. Best: lr {b['lr']}, kernel {b['kernel']}, width x{b['width']}, "
            f"{b['epochs']} epochs: test {_fmt(task, b['test'])}.",
            "",
            "| lr | kernel | width | parameters | epochs | training time | train | test "
            "| best test during training |",
            "|---:|---:|---:|---:|---:|---:|---|---|---|",
        ]
        for t in sorted(
            (t for t in trials if t["task"] == task), key=lambda t: (t["rung"], -_score(task, t))
        ):
            mark = "**" if t is b else ""
            lines.append(
                f"| {t['lr']} | {t['kernel']} | x{t['width']} | {t['parameters']:,} "
                f"| {t['epochs']} | {t['train_time_s']:.0f} s | {_fmt(task, t['train'])} "
                f"| {mark}{_fmt(task, t['test'])}{mark} | {_best(task, t)} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--out", default="results")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    a = p.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    run_search(a.out, tasks=a.tasks, device=a.device, progress=False)
