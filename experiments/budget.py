"""The paper's claims judged at the reference code's own budget (campaign blocks `reference` and
`sufficiency`), by the words fixed in results/plan.json (`reference_budget`) before their first
run: nothing here chooses a threshold; the plan's `verdict` numbers and `words` are read.

Per run, from its per-epoch test metric: whether it *reached* the goal (met at the end of some
epoch), the first such epoch and the training CPU seconds until then, whether it *held* it (met
on at least `held_share` of its epochs from that first one to its last, counted over at least
`held_min_epochs`), its best and its final value. Per row (a recipe on a split): it *reaches* when
enough seeds reached (`reach_seeds`: 3 of 5, 2 of 3), it *holds* when as many reached and held.
Per claim: the verdict, from the reference recipe's rows on both splits and the sufficiency rows
(the paper's recipe plus one change, quadrant split): a change *suffices* when its row holds.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

Record = dict[str, Any]

# The verdict words, in the plan's terms (results/plan.json `reference_budget.words`).
HOLDS_AS_STATED = "holds as stated at the reference's budget"
REACHED_NOT_HELD = "reached at the reference's budget, not held"
ONLY_WITH = "reaches only with X; X alone suffices"
NOT_REPRODUCED = "does not reproduce here"


def goal_of(plan: dict[str, Any], task: str, arch: str) -> dict[str, Any]:
    """The row's goal as the plan states it: the metric and the value to reach."""
    return dict(plan["verdict"]["goal"][f"{task}/{arch}"])


def goal_text(goal: dict[str, Any]) -> str:
    """The goal as the plan words it, without its notes."""
    return str(goal["text"]).split(" (")[0]


def at_goal(epoch: Record, goal: dict[str, Any]) -> bool:
    """One epoch's test metric against the goal (the history keeps the row's metric: accuracy,
    IoU, or the share located exactly)."""
    return bool(epoch["test"] >= goal["at_least"])


def run_stats(r: Record, plan: dict[str, Any]) -> Record:
    """What one run shows at the reference's budget (see the module's docstring)."""
    v = plan["verdict"]
    goal = goal_of(plan, r["task"], r["arch"])
    history = r["history"]
    met = [at_goal(h, goal) for h in history]
    first = met.index(True) if any(met) else None
    out: Record = {
        "seed": r["seed"],
        "split": r["split"],
        "epochs": r["epochs"],
        "epochs_run": len(history),
        "stopped_early": bool(r.get("stopped_early")),
        "reached": first is not None,
        "first_epoch": None,
        "first_cpu_s": None,
        "span": 0,
        "held_share": None,
        "held": False,
        "best": max(h["test"] for h in history) if history else None,
        "final": history[-1]["test"] if history else None,
        "train_final": history[-1]["train"] if history else None,
        # render: the stricter goal (background and square values bounded) beside IoU's
        "strict_first_epoch": next((h["epoch"] for h in history if h["goal"]), None),
    }
    if first is not None:
        after = met[first:]
        share = sum(after) / len(after)
        out.update(
            first_epoch=history[first]["epoch"],
            first_cpu_s=history[first]["cpu_s"],
            span=len(after),
            held_share=share,
            held=share >= v["held_share"] and len(after) >= v["held_min_epochs"],
        )
    return out


def needed(plan: dict[str, Any], seeds: int) -> int:
    """Seeds that must reach (or hold) for a row of `seeds` seeds to reach (or hold)."""
    table = plan["verdict"]["reach_seeds"]
    if str(seeds) in table:
        return int(table[str(seeds)])
    return seeds // 2 + 1  # a row of another size: a majority


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def row_stats(runs: Sequence[Record], plan: dict[str, Any], planned: int) -> Record:
    """A recipe's row on one split: `planned` seeds, `runs` the records done so far."""
    stats = [run_stats(r, plan) for r in sorted(runs, key=lambda r: r["seed"])]
    reached = [s for s in stats if s["reached"]]
    held = [s for s in reached if s["held"]]
    need = needed(plan, planned)
    complete = len(stats) == planned
    return {
        "runs": stats,
        "planned": planned,
        "done": len(stats),
        "complete": complete,
        "need": need,
        "reached": len(reached),
        "held": len(held),
        # judged once every planned seed is done (before: still open, unless already settled)
        "reaches": len(reached) >= need or (None if not complete else False),
        "holds": len(held) >= need or (None if not complete else False),
        "median_first_epoch": _median([s["first_epoch"] for s in reached]),
        "median_first_cpu_s": _median([s["first_cpu_s"] for s in reached]),
        "median_held_share": _median([s["held_share"] for s in reached]),
        "finals": [s["final"] for s in stats],
        "median_final": _median([s["final"] for s in stats]),
        "median_best": _median([s["best"] for s in stats]),
        "stopped_early": sum(s["stopped_early"] for s in stats),
    }


def claim_verdict(reference: dict[str, Record], sufficiency: dict[str, Record]) -> Record:
    """The claim's verdict word (the plan's), the changes that suffice alone, and whether every
    row it rests on is complete. `reference`: split -> the reference recipe's row;
    `sufficiency`: change -> its row (quadrant)."""
    suffices = sorted(
        (c for c, row in sufficiency.items() if row["holds"]),
        key=lambda c: (sufficiency[c]["median_first_epoch"] or 0, c),
    )
    reach_only = [c for c, row in sufficiency.items() if row["reaches"] and not row["holds"]]
    rows = [*reference.values(), *sufficiency.values()]
    complete = all(r["complete"] for r in rows) and bool(reference)
    reaches = [r["reaches"] for r in reference.values()]
    holds = [r["holds"] for r in reference.values()]
    if reaches and all(reaches) and all(holds):
        word = HOLDS_AS_STATED
    elif reaches and all(reaches):
        word = REACHED_NOT_HELD
    elif suffices:
        word = ONLY_WITH
    else:
        word = NOT_REPRODUCED
    # Open while a row it rests on is still running and could change it.
    settled = complete or (
        word == HOLDS_AS_STATED and all(r["reaches"] and r["holds"] for r in reference.values())
    )
    return {
        "word": word,
        "suffices": suffices,
        "reaches_only": sorted(reach_only),
        "settled": settled,
        "runs_done": sum(r["done"] for r in rows),
        "runs_planned": sum(r["planned"] for r in rows),
    }


def verdict_text(v: Record) -> str:
    """The verdict as the tables say it."""
    word = v["word"]
    if word == ONLY_WITH:
        named = " or ".join(f"`{c}`" for c in v["suffices"])
        text = f"reaches only with a change; {named} alone suffices"
    elif word == REACHED_NOT_HELD and v["suffices"]:
        named = " or ".join(f"`{c}`" for c in v["suffices"])
        text = f"{word}; held with {named} alone"
    else:
        text = word
    if not v["settled"]:
        return f"open: {v['runs_done']} of {v['runs_planned']} runs done"
    return text
