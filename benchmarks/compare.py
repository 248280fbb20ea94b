"""`make compare BEFORE=<git ref>`: this checkout against another commit, side by side.

These machines are shared and drift by 10-25% within minutes, so a before/after figure means
something only from alternating runs on the same machine: the other commit is checked out in a
temporary git worktree (same virtual environment, same models), and its server and this
checkout's take turns under the same load, `--rounds` times each. Prints every run, the means
and the ratio after / before.

    python -m benchmarks.compare --before 386c9f4 --rounds 3 --case b

`--before-env` / `--after-env NAME=VALUE` set settings for one side only: the same commit with
and without one feature (`--before HEAD --before-env COORDCONV_FAST_DISPATCH=false` measures the
fast dispatch's own gain).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean

from benchmarks import bench

CASES = {  # name: (items per request, clients)
    "b": (1, 32),
    "a": (64, 4),
}


def worktree(ref: str, where: Path) -> Path:
    """`ref` checked out (detached) under `where`; raises with git's message if it cannot be."""
    path = where / "before"
    done = subprocess.run(
        ["git", "worktree", "add", "--detach", "-q", str(path), ref],
        cwd=bench.ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"compare: cannot check out {ref!r}: {done.stderr.strip()}")
    return path


def measure(
    root: Path, case: str, seconds: float, model: str, env: dict[str, str]
) -> tuple[float, float]:
    """(items/s, p99 ms) of one fresh server from `root` under `case`."""
    items, clients = CASES[case]
    with bench.server(root=root, providers="cpu", env=env) as url:
        r = bench.load(url, bench.v1_request(model, items), clients, seconds, items=items)
    if r.errors:
        raise SystemExit(f"compare: {r.errors} requests failed against {root}")
    return r.items_per_s, r.pct(99)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    p.add_argument("--before", required=True, help="the git commit (or branch, tag) to beat")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--case", nargs="+", default=["b"], choices=sorted(CASES))
    p.add_argument("--model", default="render", choices=bench.MODELS)
    p.add_argument("--seconds", type=float, default=8.0, help="per measured run")
    p.add_argument("--before-env", nargs="*", default=[], metavar="NAME=VALUE")
    p.add_argument("--after-env", nargs="*", default=[], metavar="NAME=VALUE")
    a = p.parse_args(argv)
    envs = {"before": _env(a.before_env), "after": _env(a.after_env)}
    with tempfile.TemporaryDirectory(prefix="coordconv-compare-") as tmp:
        before = worktree(a.before, Path(tmp))
        try:
            for case in a.case:
                runs: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
                for i in range(a.rounds):
                    for label, root in (("before", before), ("after", bench.ROOT)):
                        ips, p99 = measure(root, case, a.seconds, a.model, envs[label])
                        runs[label].append((ips, p99))
                        print(
                            f"({case}) round {i + 1} {label:6s} {ips:7,.0f} items/s  "
                            f"p99 {p99:6.1f} ms",
                            flush=True,
                        )
                b, f = (mean(x for x, _ in runs[k]) for k in ("before", "after"))
                b99, f99 = (mean(y for _, y in runs[k]) for k in ("before", "after"))
                print(
                    f"({case}) {a.model}, {CASES[case][0]} item(s)/request, {CASES[case][1]} "
                    f"clients: before {b:,.0f} items/s (p99 {b99:.1f} ms), after {f:,.0f} "
                    f"items/s (p99 {f99:.1f} ms): x{f / b:.2f} (means of {a.rounds} alternating "
                    f"runs; before = {a.before} {' '.join(a.before_env)}".rstrip()
                    + (f", after {' '.join(a.after_env)}" if a.after_env else "")
                    + ")",
                    flush=True,
                )
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(before)],
                cwd=bench.ROOT,
                capture_output=True,
            )
    return 0


def _env(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"compare: {pair!r} is not NAME=VALUE")
        out[name] = value
    return out


if __name__ == "__main__":
    sys.exit(main())
