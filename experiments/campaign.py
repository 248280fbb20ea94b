"""The reproduction campaign: every run of results/reproduction.md, planned in advance, run in
order, one JSON per completed run under results/records/<block>/<name>.json, resumable.

Blocks, in the order they run (`coordconv reproduce --blocks ...` picks some):

1. `paper`: the reference code's recipe (experiments/recipe.py) on the fresh seeds 10-19, every
   CoordConv row (pixel, render, locate heatmap, the 906-parameter regressor) on both splits.
2. `ours`: the `ours` recipe on the same seeds and rows.
3. `locate`: what locate owes to CoordConv: the heatmap net without its coordinate channels
   (`ours` otherwise) on seeds 10-14, both splits.
4. `ablation`: `ours` minus one change, for every change of every row, quadrant split, seeds
   10-14.
5. `search`: the baselines' configurations, chosen on a validation split (10% of the training
   set, seed 10) by their best validation metric over the epochs; the paper's recipe (he_normal,
   minibatch 16, constant rate) with its swept knobs (learning rate, filter size, width).
6. `baseline`: each split's chosen configuration and epochs, retrained on the whole training
   set on seeds 10-12 (runs once the split's search is complete).
7. `reference`: the paper's recipe at the reference's own budget (50 epochs for pixel and
   render, 100 for the 906-parameter regressor), no early stop, on the new seeds 20-24 of both
   splits: does it reach the goal, how soon, and does it stay there.
8. `sufficiency`: the paper's recipe plus ONE change of ours (experiments.recipe.SUFFICIENCY), at
   the reference's budget, quadrant split, seeds 20-24 (render: 20-22); a run stops after 10
   consecutive epochs at the goal. What suffices alone, beside the ablations' what is necessary.
   Blocks 7 and 8 run row by row (pixel, the 906 regressor, render) and were fixed, with the
   words their verdicts use (VERDICT), in results/plan.json's `reference_budget` before their
   first run.

Seeds, recipes and budgets are fixed here before any run on seeds 10-19; nothing in this file
is to change after a result on them is seen (see the results header).

Workers (`--workers`) share the plan through lock files under the runs folder: each run is
trained by one worker, a crashed worker's lock is taken over (and its run goes on from the last
epoch it finished: training.train's checkpoint), and a finished run is never trained again.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from experiments import recipe as recipes
from training import metrics
from training.metrics import primary_metric
from training.train import train

SEEDS = tuple(range(10, 20))  # fresh: fixed before the first run, never used to develop
ABLATION_SEEDS = tuple(range(10, 15))
BASELINE_SEEDS = (10, 11, 12)
DEV_SEEDS = tuple(range(10))  # the recipe development seeds of the previous table
SPLITS = ("uniform", "quadrant")
ROWS = list(recipes.PAPER)  # (task, arch) of the CoordConv rows
REFERENCE = "reference"
SUFFICIENCY = "sufficiency"
BLOCKS = ("paper", "ours", "locate", "ablation", "search", "baseline", REFERENCE, SUFFICIENCY)

# Blocks `reference` and `sufficiency`: the claims judged at the reference's own budget.
REFERENCE_SEEDS = tuple(range(20, 25))  # new: fixed in the plan before their first run
BUDGET_ROWS = (("pixel", "coordconv"), ("locate", "coordconv906"), ("render", "coordconv"))
SUFFICIENCY_SEEDS = {
    ("pixel", "coordconv"): REFERENCE_SEEDS,
    ("locate", "coordconv906"): REFERENCE_SEEDS,
    ("render", "coordconv"): REFERENCE_SEEDS[:3],  # 18 CPU minutes a run: 3 seeds
}
# Sections added to a plan after it was first fixed: each carries its own `fixed_at`, written
# the first time a plan without it is ensured (before any run of the blocks it plans).
REFERENCE_BUDGET = "reference_budget"
EXTENSIONS = (REFERENCE_BUDGET,)
STOP_AFTER_GOAL = 10  # sufficiency runs stop after this many consecutive epochs at the goal
# What each verdict word means, fixed before the runs (results/plan.json, `reference_budget`).
# A run's epochs are judged on the test set by `goal` (the paper's metric; render's stricter
# value goal is reported beside, and it is the one sufficiency runs stop on).
VERDICT: dict[str, Any] = {
    "goal": {
        "pixel/coordconv": {"metric": "accuracy", "at_least": 1.0, "text": "test accuracy 100%"},
        "render/coordconv": {
            "metric": "iou",
            "at_least": 0.99,
            "text": "test IoU >= 0.99 (the paper's metric; the stricter value goal, background "
            f"mean <= {metrics.BACKGROUND_MEAN_MAX} and square mean >= "
            f"{metrics.SQUARE_MEAN_MIN}, is reported beside and is what sufficiency runs stop on)",
        },
        "locate/coordconv906": {
            "metric": "exact",
            "at_least": 1.0,
            "text": "every test one-hot pixel located exactly (100% exact)",
        },
    },
    "held_share": 0.9,
    "held_min_epochs": 10,
    "reach_seeds": {"5": 3, "3": 2},  # seeds of a row -> how many must reach (or hold)
    "stop_after_goal": STOP_AFTER_GOAL,
}
VERDICT_WORDS: dict[str, str] = {
    "reached": "a run reached the goal: the goal was met at the end of some epoch within its "
    "budget; its first epoch (and training CPU seconds) at the goal are recorded",
    "held": "a run held the goal: it met the goal on at least 90% of its epochs from the first "
    "at the goal to its last, counted over at least 10 epochs (a run first at the goal in its "
    "last 9 epochs did not hold: too late to tell)",
    "reaches": "a row reaches the goal: at least 3 of its 5 seeds reached it (3 seeds: 2)",
    "holds": "a row holds the goal: at least 3 of its 5 seeds reached and held it (3 seeds: 2)",
    "suffices": "a change suffices alone: the paper's recipe plus that change, nothing else, "
    "holds the goal on the quadrant split",
    "holds as stated at the reference's budget": "the claim's verdict when the paper's recipe "
    "holds the goal on both splits",
    "reached at the reference's budget, not held": "when it reaches on both splits and does not "
    "hold on at least one (the changes that suffice are named beside)",
    "reaches only with X; X alone suffices": "when it does not reach on some split and at least "
    "one change suffices (every such change named)",
    "does not reproduce here": "when it does not reach on some split and no single change suffices",
}

# The baselines' search (block `search`): the paper's swept knobs, cut to what runs here.
SEARCH_SPACE: dict[str, dict[str, Sequence[Any]]] = {
    "pixel": {"lr": (0.01, 0.003), "shape": ((3, 1), (4, 1), (4, 2))},
    "render": {"lr": (0.01, 0.003), "shape": ((3, 1), (4, 1), (4, 2))},
    "locate": {"lr": (0.001, 0.0005), "shape": ((3, 1), (5, 1), (3, 2))},
}
SEARCH_EPOCHS = {"pixel": 30, "render": 30, "locate": 15}
SEARCH_SEED = 10
VAL_FRACTION = 0.1
# The paper's search, for the table: 6 learning rates x 3 L2 x 3 filter sizes x 3 widths x 2
# minibatch sizes (x 2 losses for rendering), up to 1000 epochs each (experiment_logs.sh).
PAPER_SEARCH = {
    "pixel": "324 configurations x 1000 epochs",
    "render": "648 configurations x 1000 epochs",
    "locate": "9 configurations x 100 epochs",
}

Spec = dict[str, Any]

# Block `full-budget`, added after the paper block's misses were seen (so it is not in the plan
# fixed in advance and counts in no verdict): the paper recipe at the reference's own epochs, on
# one seed of the quadrant split, to tell a miss of the recipe from a miss of the cut budget.
# The heatmap locate net is not in the reference, so it has no reference budget to run.
FULL_BUDGET = "full-budget"
FULL_BUDGET_SEED = 10
FULL_BUDGET_ROWS = (("pixel", "coordconv"), ("render", "coordconv"), ("locate", "coordconv906"))


def _spec(
    block: str,
    task: str,
    arch: str,
    split: str,
    seed: int,
    recipe: str,
    extra: str = "",
    **config: Any,
) -> Spec:
    """One planned run: its block, its name (as under results/records/BLOCK/) and its config."""
    return {
        "block": block,
        "name": _name(task, arch, split, seed, extra),
        "config": {
            "task": task,
            "arch": arch,
            "split": split,
            "seed": seed,
            "recipe": recipe,
            **config,
        },
    }


def full_budget_plan() -> list[Spec]:
    """The `full-budget` block's runs (see FULL_BUDGET)."""
    return [
        _spec(
            FULL_BUDGET,
            task,
            arch,
            "quadrant",
            FULL_BUDGET_SEED,
            "paper",
            "-full",
            epochs=recipes.REFERENCE_EPOCHS[(task, arch)],
        )
        for task, arch in FULL_BUDGET_ROWS
    ]


def budget_plan(
    rows: Sequence[tuple[str, str]] = BUDGET_ROWS,
    blocks: Sequence[str] = (REFERENCE, SUFFICIENCY),
) -> list[Spec]:
    """Blocks `reference` and `sufficiency`, row by row (pixel first): the paper's recipe at the
    reference's budget on both splits, then the paper's recipe plus each single change."""
    specs: list[Spec] = []
    for task, arch in rows:
        epochs = recipes.REFERENCE_EPOCHS[(task, arch)]
        if REFERENCE in blocks:
            for seed in REFERENCE_SEEDS:
                for split in SPLITS:
                    specs.append(_spec(REFERENCE, task, arch, split, seed, "paper", epochs=epochs))
        if SUFFICIENCY in blocks:
            for change in recipes.SUFFICIENCY[(task, arch)]:
                for seed in SUFFICIENCY_SEEDS[(task, arch)]:
                    specs.append(
                        _spec(
                            SUFFICIENCY,
                            task,
                            arch,
                            "quadrant",
                            seed,
                            "paper",
                            f"-plus-{change}",
                            plus=[change],
                            epochs=epochs,
                            stop_after_goal=STOP_AFTER_GOAL,
                        )
                    )
    return specs


def record_metric(r: dict[str, Any]) -> str:
    """The metric a run record is judged by (the exact share for one-hot-only locate runs)."""
    if "metric" in r:
        return str(r["metric"])
    cfg = r.get("config", {})
    onehot = cfg.get("onehot_only")
    return primary_metric(r["task"], r["arch"], bool(onehot) or r["arch"] == "coordconv906")


def _name(task: str, arch: str, split: str, seed: int, extra: str = "") -> str:
    return f"{task}-{arch}-{split}{extra}-s{seed}"


def search_name(task: str, split: str, c: dict[str, Any]) -> str:
    return f"{task}-baseline-{split}-lr{c['lr']}-k{c['kernel']}-w{c['width']}"


def search_configs(task: str) -> list[dict[str, Any]]:
    space = SEARCH_SPACE[task]
    return [
        {"lr": lr, "kernel": k, "width": w}
        for lr, (k, w) in itertools.product(space["lr"], space["shape"])
    ]


def static_plan(
    rows: Sequence[tuple[str, str]] = tuple(ROWS),
    seeds: Sequence[int] = SEEDS,
    ablation_seeds: Sequence[int] = ABLATION_SEEDS,
    blocks: Sequence[str] = BLOCKS,
    tasks: Sequence[str] = ("pixel", "render", "locate"),
) -> list[Spec]:
    """Every run that does not depend on another's result, in run order."""
    specs: list[Spec] = []
    if "paper" in blocks or "ours" in blocks:
        for recipe in ("paper", "ours"):
            if recipe not in blocks:
                continue
            for seed in seeds:  # seed-major: a partial block has whole seeds of every row
                for (task, arch), split in itertools.product(rows, SPLITS):
                    specs.append(_spec(recipe, task, arch, split, seed, recipe))
    if "locate" in blocks and ("locate", "coordconv") in rows:
        for seed in ablation_seeds:
            for split in SPLITS:
                specs.append(
                    _spec(
                        "locate",
                        "locate",
                        "coordconv",
                        split,
                        seed,
                        "ours",
                        "-nocoords",
                        coords=False,
                    )
                )
    if "ablation" in blocks:
        # Change-major, most suspect first (experiments.recipe.CHANGES): a partial block has
        # whole changes.
        for change in recipes.CHANGES:
            for task, arch in rows:
                if change not in recipes.changes_of(task, arch):
                    continue
                for seed in ablation_seeds:
                    specs.append(
                        _spec(
                            "ablation",
                            task,
                            arch,
                            "quadrant",
                            seed,
                            "ours",
                            f"-without-{change}",
                            without=[change],
                        )
                    )
    if "search" in blocks:
        for task in tasks:
            for split in SPLITS:
                for c in search_configs(task):
                    specs.append(
                        {
                            "block": "search",
                            "name": search_name(task, split, c),
                            "config": {
                                "task": task,
                                "arch": "baseline",
                                "split": split,
                                "seed": SEARCH_SEED,
                                "recipe": "paper",
                                "epochs": SEARCH_EPOCHS[task],
                                "val_fraction": VAL_FRACTION,
                                "onehot_only": task == "locate",
                                **c,
                            },
                        }
                    )
    if REFERENCE in blocks or SUFFICIENCY in blocks:
        budget_rows = [r for r in BUDGET_ROWS if r in rows]
        specs += budget_plan(budget_rows, [b for b in blocks if b in (REFERENCE, SUFFICIENCY)])
    return specs


def choose(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The configuration and epoch with the best validation metric over every trial's epochs
    (the first such epoch; ties go to the earlier trial): the test set plays no part."""
    higher = not record_metric(trials[0]).startswith("mean_error")
    best: tuple[float, dict[str, Any], int] | None = None
    for t in trials:
        for h in t["history"]:
            score = h["val"] if higher else -h["val"]
            if best is None or score > best[0]:
                best = (score, t, h["epoch"])
    assert best is not None
    _, t, epoch = best
    cfg = t["config"]
    return {
        "lr": cfg["lr"],
        "kernel": cfg["kernel"],
        "width": cfg["width"],
        "epochs": epoch,
        "val": best[0] if higher else -best[0],
        "trial": t["name"],
    }


def baseline_plan(
    results: Path, tasks: Sequence[str] = ("pixel", "render", "locate")
) -> tuple[list[Spec], list[str]]:
    """The final baseline runs whose split's search is complete, and the (task, split) pairs
    still waiting for theirs."""
    specs, waiting = [], []
    for task in tasks:
        for split in SPLITS:
            names = [search_name(task, split, c) for c in search_configs(task)]
            trials = [load_one(results, "search", n) for n in names]
            if any(t is None for t in trials):
                waiting.append(f"{task}/{split}")
                continue
            chosen = choose([t for t in trials if t is not None])
            for seed in BASELINE_SEEDS:
                specs.append(
                    {
                        "block": "baseline",
                        "name": _name(task, "baseline", split, seed),
                        "config": {
                            "task": task,
                            "arch": "baseline",
                            "split": split,
                            "seed": seed,
                            "recipe": "paper",
                            "onehot_only": task == "locate",
                            "lr": chosen["lr"],
                            "kernel": chosen["kernel"],
                            "width": chosen["width"],
                            "epochs": max(chosen["epochs"], 1),
                        },
                        "chosen": chosen,
                    }
                )
    return specs, waiting


def run_path(results: Path, block: str, name: str) -> Path:
    return Path(results) / "records" / block / f"{name}.json"


def load_one(results: Path, block: str, name: str) -> dict[str, Any] | None:
    p = run_path(results, block, name)
    return json.loads(p.read_text()) if p.is_file() else None


def load_all(results: Path) -> list[dict[str, Any]]:
    """Every completed run under results/runs/, in a stable order."""
    root = Path(results) / "records"
    return [json.loads(p.read_text()) for p in sorted(root.glob("*/*.json"))]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock(locks: Path, spec: Spec) -> bool:
    """Claim a run for this process (False: another live worker has it)."""
    locks.mkdir(parents=True, exist_ok=True)
    path = locks / f"{spec['block']}-{spec['name']}.lock"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(path.read_text() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                return False
            path.unlink(missing_ok=True)  # its worker died: take it over
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def _unlock(locks: Path, spec: Spec) -> None:
    (locks / f"{spec['block']}-{spec['name']}.lock").unlink(missing_ok=True)


def run_one(spec: Spec, results: Path, runs: Path, device: str = "auto") -> dict[str, Any]:
    """Train one planned run and write its JSON (atomically): the metrics, per-epoch history
    and config, plus the block, name and (baselines) how the configuration was chosen."""
    config = dict(spec["config"])
    config["without"] = tuple(config.get("without", ()))
    config["plus"] = tuple(config.get("plus", ()))
    r = train(
        recipes.train_config(
            **config,
            device=device,
            out=str(Path(runs) / spec["block"] / spec["name"]),
            progress=False,
        ),
        resume=True,  # a run whose worker died goes on from its last finished epoch
    )
    r.update({"block": spec["block"], "name": spec["name"], "spec": spec})
    path = run_path(results, spec["block"], spec["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(r, indent=1) + "\n")
    tmp.replace(path)
    return r


def work(
    results: Path,
    runs: Path,
    blocks: Sequence[str] = BLOCKS,
    device: str = "auto",
    plan: Callable[[], list[Spec]] | None = None,
    after_each: Callable[[], None] | None = None,
    poll_s: float = 30.0,
) -> int:
    """Run every planned run not yet done (one worker); returns how many this worker trained."""
    results, runs = Path(results), Path(runs)
    locks = runs / "locks"
    trained = 0
    while True:
        specs = plan() if plan is not None else static_plan(blocks=blocks)
        waiting: list[str] = []
        if plan is None and "baseline" in blocks:
            final, waiting = baseline_plan(results)
            specs += final
        todo = [s for s in specs if not run_path(results, s["block"], s["name"]).is_file()]
        ran = False
        for spec in todo:
            if run_path(results, spec["block"], spec["name"]).is_file() or not _lock(locks, spec):
                continue
            try:
                t0 = time.perf_counter()
                r = run_one(spec, results, runs, device)
            finally:
                _unlock(locks, spec)
            trained += 1
            m = record_metric(r)
            print(
                f"{time.strftime('%H:%M:%S')} {spec['block']:>8} {spec['name']:<48} "
                f"{time.perf_counter() - t0:6.0f}s test {m} {r['test'][m]:.4f} "
                f"goal {'met' if r['goal_met'] else 'missed'}",
                flush=True,
            )
            if after_each is not None:
                after_each()
            ran = True
            break  # re-plan: a finished search adds its baseline runs
        if ran:
            continue
        busy = [s for s in todo if (locks / f"{s['block']}-{s['name']}.lock").exists()]
        if not busy and not (waiting and "search" in blocks):
            return trained
        time.sleep(poll_s)  # other workers hold the rest: wait for them to finish


def planned(results: Path) -> dict[str, Spec]:
    """Every planned run by `block/name` (the baselines once their split's search is done)."""
    specs = static_plan() + baseline_plan(results)[0] + full_budget_plan()
    return {f"{s['block']}/{s['name']}": s for s in specs}


def rerun(results: Path, key: str, scratch: Path, device: str = "auto") -> dict[str, Any]:
    """Train one planned run (`block/name`, as under results/records/) again into `scratch`,
    never over its record, and compare the final test metric with the recorded one."""
    specs = planned(Path(results))
    if key not in specs:
        near = sorted(k for k in specs if k.split("/")[0] == key.split("/")[0])[:3]
        blocks = ", ".join((*BLOCKS, FULL_BUDGET))
        hint = f" (e.g. {', '.join(near)})" if near else f" (blocks: {blocks})"
        raise ValueError(f"{key!r} is not a planned run: name it BLOCK/NAME{hint}")
    recorded = load_one(Path(results), *key.split("/", 1))
    r = run_one(specs[key], Path(scratch) / "results", Path(scratch) / "runs", device)
    m = record_metric(r)
    return {
        "key": key,
        "metric": m,
        "rerun": r["test"][m],
        "rerun_goal_met": r["goal_met"],
        "recorded": None if recorded is None else recorded["test"][m],
        "recorded_goal_met": None if recorded is None else recorded["goal_met"],
        "record": str(Path(scratch) / "results" / "records" / specs[key]["block"]),
    }


def plan_record() -> dict[str, Any]:
    """What is fixed before the first run: seeds, recipes, budgets, the search."""
    from dataclasses import asdict

    return {
        "seeds": list(SEEDS),
        "ablation_seeds": list(ABLATION_SEEDS),
        "baseline_seeds": list(BASELINE_SEEDS),
        "dev_seeds": list(DEV_SEEDS),
        "search": {
            "seed": SEARCH_SEED,
            "val_fraction": VAL_FRACTION,
            "epochs": SEARCH_EPOCHS,
            "space": {t: {"lr": v["lr"], "shape": v["shape"]} for t, v in SEARCH_SPACE.items()},
        },
        "recipes": {
            f"{task}/{arch}": {
                "paper": asdict(recipes.resolve(task, arch, "paper")),
                "ours": asdict(recipes.resolve(task, arch, "ours")),
                "changes": recipes.changes_of(task, arch),
                "reference_epochs": recipes.REFERENCE_EPOCHS[(task, arch)],
            }
            for task, arch in ROWS
        },
        REFERENCE_BUDGET: {
            "blocks": {
                REFERENCE: "the paper's recipe at the reference's own epochs, no early stop, "
                "seeds 20-24, both splits",
                SUFFICIENCY: "the paper's recipe plus one change of ours, at the reference's "
                f"epochs, quadrant split; a run stops after {STOP_AFTER_GOAL} consecutive "
                "epochs at the goal",
            },
            "seeds": list(REFERENCE_SEEDS),
            "rows": [f"{t}/{a}" for t, a in BUDGET_ROWS],
            "epochs": {f"{t}/{a}": recipes.REFERENCE_EPOCHS[(t, a)] for t, a in BUDGET_ROWS},
            "sufficiency": {
                f"{t}/{a}": {
                    "changes": recipes.SUFFICIENCY[(t, a)],
                    "seeds": list(SUFFICIENCY_SEEDS[(t, a)]),
                    "paper_plus": {
                        c: {
                            **asdict(recipes.resolve(t, a, "paper", plus=(c,))),
                            "epochs": recipes.REFERENCE_EPOCHS[(t, a)],
                        }
                        for c in recipes.SUFFICIENCY[(t, a)]
                    },
                }
                for t, a in BUDGET_ROWS
            },
            "verdict": VERDICT,
            "words": VERDICT_WORDS,
        },
    }


def ensure_plan(results: Path) -> dict[str, Any]:
    """results/plan.json: written once, with the time, before the first run; a later plan that
    differs from it is refused (the recipes must not change after results are seen)."""
    path = Path(results) / "plan.json"
    record = json.loads(json.dumps(plan_record()))
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if path.is_file():
        fixed = json.loads(path.read_text())
        added = [k for k in EXTENSIONS if k not in fixed]
        for key in added:
            fixed[key] = {"fixed_at": now, **record[key]}
        body = {k: v for k, v in fixed.items() if k not in ("fixed_at", "revisions")}
        for key in EXTENSIONS:
            body[key] = {k: v for k, v in body[key].items() if k != "fixed_at"}
        if record != body:
            raise ValueError(f"{path}: the plan in the code differs from the one fixed earlier")
        if added:
            path.write_text(json.dumps(fixed, indent=1) + "\n")
        return fixed
    path.parent.mkdir(parents=True, exist_ok=True)
    fixed = {"fixed_at": now, **record}
    for key in EXTENSIONS:
        fixed[key] = {"fixed_at": now, **record[key]}
    path.write_text(json.dumps(fixed, indent=1) + "\n")
    return fixed


def main(argv: Sequence[str] | None = None) -> int:
    """One worker: `python -m experiments.campaign --results results --runs runs/campaign`."""
    import argparse

    p = argparse.ArgumentParser(description="one worker of the reproduction campaign")
    p.add_argument("--results", default="results")
    p.add_argument("--runs", default="runs/campaign")
    p.add_argument("--blocks", nargs="+", choices=BLOCKS, default=list(BLOCKS))
    p.add_argument(
        "--full-budget",
        action="store_true",
        help="only the after-the-fact check: the paper recipe at the reference's epochs, one seed",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    a = p.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    ensure_plan(Path(a.results))
    plan = full_budget_plan if a.full_budget else None
    n = work(Path(a.results), Path(a.runs), a.blocks, a.device, plan=plan)
    print(f"worker {os.getpid()}: trained {n} runs; nothing left for it", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
