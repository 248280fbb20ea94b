"""`coordconv train | reproduce | export | models | evaluate`. argparse only at import time:
torch is imported when a command runs. Bad input exits 2 with one line saying what was wrong."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.nets import Arch, Task

from coordconv.contract import TASKS

# experiments.recipe's names, repeated so `--help` needs no torch
# (tests/training/test_training_cli.py checks they agree).
RECIPES = ("paper", "ours")
CHANGES = (
    "offset_init",
    "unit_inputs",
    "peak_init",
    "spread_init",
    "taught_painter",
    "pixel_aux",
    "iou_loss",
    "zero_coord_init",
    "heatmap_ce",
    "zero_bias_init",
    "torch_init",
    "no_l2",
    "lr",
    "cosine",
    "unit_output",
    "minibatch_16",
    "pixel_mse",
    "short_epochs",
)
BLOCKS = ("paper", "ours", "locate", "ablation", "search", "baseline", "reference", "sufficiency")

# coordconv906: the paper's 906-parameter regressor (locate, one-hot pixels only).
ARCHS = ("coordconv", "baseline", "coordconv906")
SPLITS = ("uniform", "quadrant", "all")
# The shipped models: trained on the quadrant split's training set, seed 0.
SHIPPED: list[tuple[str, Task, Arch]] = [
    ("pixel", "pixel", "coordconv"),
    ("render", "render", "coordconv"),
    ("locate", "locate", "coordconv"),
    ("pixel-baseline", "pixel", "baseline"),
    ("render-baseline", "render", "baseline"),
    ("locate-baseline", "locate", "baseline"),
]


# The full-canvas models see 8192 samples an epoch (4096 centres and as many sub-pixel points, or
# clean and noisy images) instead of about 2400. render v2 is not trained: it paints pixel v2's
# choice (training.nets.PaintedPixel).
FULL_EPOCHS = {"pixel": 3, "locate": 3}
# The shipped quadrant models' budget where the default's is not enough to ship: 2 epochs of the
# render recipe reach IoU 1.000 with a 0.20 grey background, which export's value check
# refuses; 5 epochs bring it to 0.03 (seed 0). The reproduction table reports the recipe as fixed.
SHIPPED_EPOCHS = {"render": 5}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _writable_dir(path: str, what: str) -> Path:
    """Create `path` (and parents) now, so a bad output fails before any training."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SystemExit(f"coordconv: cannot create {what} {p}: {exc.strerror}") from None
    if not os.access(p, os.W_OK):
        raise SystemExit(f"coordconv: {what} {p} is not writable")
    return p


TRAIN_HINT = (
    "install the training dependencies: from a checkout, `make models` installs them into .venv "
    "(or `.venv/bin/pip install -e '.[train]' torch==2.13.0`); elsewhere "
    "`pip install 'coordconv[train]' torch`"
)


def _run(func: Callable[[], Any]) -> int:
    """Run a command; expected failures become one line on stderr and exit code 2."""
    try:
        from training.export import ExportError

        func()
    except ImportError as exc:
        print(f"coordconv: missing dependency {exc.name!r}: {TRAIN_HINT}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, ExportError) as exc:
        print(f"coordconv: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("coordconv: interrupted", file=sys.stderr)
        return 130
    return 0


def train_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="coordconv train", description="Train one model.")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--arch", choices=ARCHS, default="coordconv")
    p.add_argument("--split", choices=SPLITS, default="quadrant")
    p.add_argument(
        "--recipe",
        choices=RECIPES,
        default="ours",
        help="paper: the reference code's recipe; ours: with this project's changes "
        "(experiments/recipe.py, results/reproduction.md lists them)",
    )
    p.add_argument(
        "--without",
        action="append",
        default=[],
        choices=CHANGES,
        metavar="CHANGE",
        help="turn one change of `ours` off (repeatable): " + ", ".join(CHANGES),
    )
    p.add_argument("--epochs", type=_non_negative_int, help="default: the recipe's")
    p.add_argument("--lr", type=_positive_float)
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--weight-decay", type=float, help="Adam's coupled decay (default 0)")
    p.add_argument("--l2", type=float, help="L2 on the kernels, in the loss (default: recipe's)")
    p.add_argument(
        "--no-coords",
        action="store_true",
        help="locate heatmap net without its coordinate channels",
    )
    p.add_argument("--kernel", type=_positive_int, default=3, help="baselines: filter size")
    p.add_argument("--width", type=_positive_int, default=1, help="baselines: width multiplier")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.25, help="uniform split only")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda[:N]")
    p.add_argument("--out", help="run folder (default runs/TASK-ARCH-SPLIT-sSEED)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed run of the same options from its last finished epoch "
        "(the run folder's checkpoint.pt; without one, start)",
    )
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    out = a.out or f"runs/{a.task}-{a.arch}-{a.split}-s{a.seed}"
    _writable_dir(out, "output folder")

    def go() -> None:
        from experiments.recipe import train_config
        from training.metrics import primary_metric
        from training.train import train

        r = train(
            train_config(
                a.task,
                a.arch,
                a.recipe,
                tuple(a.without),
                split=a.split,
                epochs=a.epochs,
                lr=a.lr,
                batch_size=a.batch_size,
                weight_decay=a.weight_decay,
                l2=a.l2,
                coords=not a.no_coords,
                kernel=a.kernel,
                width=a.width,
                seed=a.seed,
                test_fraction=a.test_fraction,
                device=a.device,
                out=out,
                progress=not a.no_progress,
            ),
            resume=a.resume,
        )
        m = primary_metric(a.task, a.arch)
        print(
            f"{a.task}/{a.arch}/{a.split} seed {a.seed}: {r['parameters']:,} parameters, "
            f"{r['wall_time_s']:.1f}s; train {m} {r['train'][m]:.4f}, test {m} "
            f"{r['test'][m]:.4f} (goal {r['goal']}: {'met' if r['goal_met'] else 'missed'}); "
            f"wrote {out}"
        )

    return _run(go)


def reproduce_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="coordconv reproduce",
        description="Run the reproduction campaign (experiments/campaign.py): the paper's recipe "
        "at a cut budget and ours on the fresh seeds 10-19, locate without coordinate channels, "
        "every change of ours ablated, the baselines' validation search and their 3 seeds, the "
        "paper's recipe at the reference's own budget and plus one change at a time (seeds "
        "20-24). Resumes: runs already under OUT/records/ are not trained again. Then writes "
        "OUT/reproduction.md, .json and the plots from every completed run.",
    )
    p.add_argument("--out", default="results")
    p.add_argument("--runs", default="runs/campaign", help="where run folders (models) go")
    p.add_argument("--blocks", nargs="+", choices=BLOCKS, default=list(BLOCKS))
    p.add_argument(
        "--recipe",
        choices=RECIPES,
        help="only the block of one recipe (the same as --blocks paper or --blocks ours)",
    )
    p.add_argument("--workers", type=_positive_int, default=1, help="parallel training workers")
    p.add_argument("--threads", type=_non_negative_int, default=0, help="torch threads each")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="no training: rewrite the table and plots from the records under OUT/records/",
    )
    p.add_argument(
        "--readme",
        help="also rewrite this file's results table, between its <!-- reproduction:begin --> "
        "and <!-- reproduction:end --> markers (e.g. README.md)",
    )
    p.add_argument(
        "--docs",
        help="also write the documentation's reproduction page (e.g. docs/reproduction.md)",
    )
    p.add_argument(
        "--rerun",
        metavar="BLOCK/NAME",
        help="train one planned run again (e.g. paper/pixel-coordconv-quadrant-s10, as named "
        "under OUT/records/) into RUNS/rerun/, never over its record, and compare it with it",
    )
    p.add_argument(
        "--full-budget",
        action="store_true",
        help="train only the after-the-fact check (block full-budget): the paper recipe at the "
        "reference's epochs on one seed of the quadrant split, in no verdict",
    )
    a = p.parse_args(argv)
    if a.full_budget and (a.report_only or a.rerun):
        p.error("--full-budget trains; it goes with neither --report-only nor --rerun")
    _writable_dir(a.out, "output folder")
    _writable_dir(a.runs, "runs folder")
    blocks = [a.recipe] if a.recipe else a.blocks

    def go() -> None:
        import subprocess

        from experiments.report import write_report

        if a.rerun:
            from experiments import campaign
            from experiments.summary import fmt_value

            if a.threads:
                import torch

                torch.set_num_threads(a.threads)
            r = campaign.rerun(Path(a.out), a.rerun, Path(a.runs) / "rerun", a.device)
            task, arch = a.rerun.split("/", 1)[1].split("-")[:2]
            was = (
                "no record yet"
                if r["recorded"] is None
                else f"recorded {fmt_value(task, arch, r['recorded'], r['metric'])}"
                + (" (the same)" if abs(r["recorded"] - r["rerun"]) < 1e-6 else "")
            )
            print(
                f"rerun {r['key']}: test {r['metric']} "
                f"{fmt_value(task, arch, r['rerun'], r['metric'])}, goal "
                f"{'met' if r['rerun_goal_met'] else 'missed'}; {was}; record in {r['record']}"
            )
            return
        if not a.report_only:
            write_report(a.out, plots=False)  # the header (seeds, recipes) before any run
            cmd = [
                sys.executable,
                "-m",
                "experiments.campaign",
                "--results",
                a.out,
                "--runs",
                a.runs,
                "--device",
                a.device,
                "--threads",
                str(a.threads),
                "--blocks",
                *blocks,
                *(["--full-budget"] if a.full_budget else []),
            ]
            procs = [subprocess.Popen(cmd) for _ in range(a.workers)]
            codes = [proc.wait() for proc in procs]
            if any(codes):
                raise ValueError(f"a worker failed (exit codes {codes}); completed runs are kept")
        summary = write_report(
            a.out, plots=not a.no_plots, runs=a.runs, readme=a.readme, docs=a.docs
        )
        print(
            f"reproduce: {summary['completed_planned']} of {summary['planned']} planned runs "
            f"complete; wrote {a.out}/reproduction.md"
        )

    return _run(go)


def export_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="coordconv export",
        description="Export a trained run to REPO/NAME/VERSION/model.onnx and REPO/NAME/"
        "config.pbtxt, verified against PyTorch before it is written.",
    )
    p.add_argument("run_dir", help="a run folder written by `coordconv train`")
    p.add_argument("--name", required=True, help="model name, e.g. render or render-baseline")
    p.add_argument("--version", type=_positive_int, help="default: one above the highest")
    p.add_argument("--repo", default="models")
    a = p.parse_args(argv)
    _writable_dir(a.repo, "model repository")

    def go() -> None:
        from training.export import export_run

        info = export_run(a.run_dir, a.name, a.repo, a.version)
        at = ", ".join(f"{n} samples at batch size {bs}" for bs, n in info["samples_at"].items())
        print(
            f"exported {info['path']} ({info['bytes'] / 1024:.0f} KiB), verified on "
            f"{at}: max |onnxruntime - torch| = {info['max_abs_diff']:.2e}"
        )

    return _run(go)


def models_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="coordconv models",
        description="Retrain (quadrant split, seed 0) and export every shipped model.",
    )
    p.add_argument("--repo", default="models")
    p.add_argument("--runs", default="runs/reproduce")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="export existing runs (e.g. from `coordconv reproduce`) instead of retraining them",
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--full",
        action="store_true",
        help="the full-canvas models instead: every centre 0..63 and sub-pixel points, exported "
        "as version 2 of pixel, render and locate (locate with a confidence output)",
    )
    a = p.parse_args(argv)
    _writable_dir(a.repo, "model repository")

    def go() -> None:
        from experiments.recipe import train_config
        from experiments.summary import run_name
        from training.export import export_run
        from training.train import train

        if a.full:
            from training.nets import TASKS as NET_TASKS

            for task in NET_TASKS:
                if task == "render":  # version 2 paints the pixel model's choice (PaintedPixel)
                    continue
                run = Path(a.runs) / run_name(task, "coordconv", "full", 0)
                # locate starts from version 1 (the quadrant model) and learns the border and
                # slight noise; from scratch, the same budget left squares 2.9 px off.
                v1 = Path(a.repo) / "locate" / "1" / "model.onnx"
                init = str(v1) if task == "locate" and v1.is_file() else None
                if not (a.reuse and (run / "model.pt").is_file()):
                    r = train(
                        train_config(
                            task,
                            "coordconv",
                            split="full",
                            seed=0,
                            epochs=FULL_EPOCHS[task],
                            lr=0.001 if init else None,
                            init_onnx=init,
                            device=a.device,
                            out=str(run),
                        ),
                        resume=True,  # a killed retrain continues where it stopped
                    )
                    print(f"{task} (full canvas): test {r['test']}")
                info = export_run(run, task, a.repo, version=2)
                print(f"{task}: {info['path']} ({info['bytes'] / 1024:.0f} KiB)")
            from training.export import export_painted_render

            pixel_run = Path(a.runs) / run_name("pixel", "coordconv", "full", 0)
            info = export_painted_render(pixel_run, a.repo, version=2)
            print(f"render: {info['path']} (min IoU over every centre {info['min_iou']:.3f})")
            # One config describes both versions: version 1 of locate gets the same confidence
            # output (its weights, and so its coordinates, unchanged).
            v1 = Path(a.repo) / "locate" / "1" / "model.onnx"
            if v1.is_file():
                from training.export import add_confidence

                info = add_confidence(v1)
                state = "added" if info["changed"] else "present"
                print(f"locate version 1: confidence output {state}")
            return
        for name, task, arch in SHIPPED:
            run = Path(a.runs) / run_name(task, arch, "quadrant", 0)
            if not (a.reuse and (run / "model.pt").is_file()):
                train(
                    train_config(
                        task,
                        arch,
                        split="quadrant",
                        seed=0,
                        epochs=SHIPPED_EPOCHS.get(task) if arch == "coordconv" else None,
                        device=a.device,
                        out=str(run),
                    ),
                    resume=True,
                )
            info = export_run(run, name, a.repo, version=1)
            print(
                f"{name}: {info['path']} ({info['bytes'] / 1024:.0f} KiB), "
                f"max |onnxruntime - torch| = {info['max_abs_diff']:.2e}"
            )

    return _run(go)


def evaluate_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="coordconv evaluate",
        description="Judge the full-canvas (version 2) models of a repository with onnxruntime: "
        "render and pixel at every centre and at real-valued points, locate over the whole "
        "canvas, and its confidence on clean, noisy and corrupted images (fixed seeds). Writes "
        "OUT/full_canvas.md and .json.",
    )
    p.add_argument("--repo", default="models")
    p.add_argument("--out", default="results")
    p.add_argument("--version", default="2")
    a = p.parse_args(argv)
    _writable_dir(a.out, "output folder")

    def go() -> None:
        from training.evaluate import evaluate

        evaluate(Path(a.repo), Path(a.out), a.version)
        print((Path(a.out) / "full_canvas.md").read_text())

    return _run(go)
