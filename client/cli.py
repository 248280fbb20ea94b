"""`coordconv client render|locate`: whole files through a running service.

Exit codes: 0 every item succeeded; 1 some items failed (listed in OUTPUT.failed.csv; rerun with
--resume to retry just those); 2 bad input or options.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from client.api import DEFAULT_RETRY_WINDOW, DEFAULT_URL
from client.files import InputError, read_coords, read_images


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _seconds(minimum_exclusive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value) or value < 0 or (minimum_exclusive and value == 0):
            bound = "> 0" if minimum_exclusive else ">= 0"
            raise argparse.ArgumentTypeError(f"must be a number of seconds {bound}, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="coordconv client", description="Send files of work to a running service."
    )
    sub = p.add_subparsers(dest="task", required=True)
    for task, helptext, inp, out in (
        (
            "render",
            "coordinates to images",
            "coords.csv or coords.jsonl (columns x, y, id?)",
            "a directory (NAME.png per item) or an .npy (N, 64, 64)",
        ),
        (
            "locate",
            "images to coordinates",
            "a directory of *.png, or an (N, 64, 64) .npy",
            "a .csv with name,x,y,confidence,ok",
        ),
    ):
        s = sub.add_parser(task, help=helptext, description=f"{task}: {helptext}.")
        s.add_argument("--input", required=True, type=Path, help=inp)
        s.add_argument("--output", required=True, type=Path, help=out)
        s.add_argument(
            "--url",
            default=os.environ.get("COORDCONV_URL", DEFAULT_URL),
            help="service URL (env COORDCONV_URL)",
        )
        s.add_argument(
            "--api-key",
            default=os.environ.get("COORDCONV_API_KEY"),
            help="bearer token (env COORDCONV_API_KEY)",
        )
        s.add_argument("--model", default=task)
        s.add_argument("--model-version", help="model version (default: the highest)")
        s.add_argument("--batch-size", type=_positive, default=64, help="items per request")
        s.add_argument("--concurrency", type=_positive, default=4, help="requests in flight")
        s.add_argument("--retries", type=_non_negative, default=5, help="retries per request")
        s.add_argument(
            "--retry-window",
            type=_seconds(False),
            default=DEFAULT_RETRY_WINDOW,
            help="keep retrying a request (honouring Retry-After) for this many seconds "
            f"(default {DEFAULT_RETRY_WINDOW:g}), even past --retries",
        )
        s.add_argument("--timeout", type=_seconds(True), default=30.0, help="seconds per request")
        if task == "locate":
            s.add_argument(
                "--min-confidence",
                type=float,
                help="fail items whose confidence is below this (locate models that answer one)",
            )
        s.add_argument("--resume", action="store_true", help="skip items already done")
        s.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _check_writable(output: Path, is_dir: bool) -> None:
    """Fail before any request if the output cannot be written (read-only, /proc, ...)."""
    folder = output if is_dir else output.parent
    if is_dir:
        folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".coordconv-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
    except OSError as exc:
        raise InputError(f"{output}: cannot write there ({exc.strerror})") from None
    probe.unlink(missing_ok=True)


def main(argv: Sequence[str]) -> int:
    from client.batch import JobRefused, run

    a = build_parser().parse_args(argv)
    try:
        if a.task == "render":
            items = read_coords(a.input)
        else:
            items = read_images(a.input)
            if a.output.suffix.lower() != ".csv":
                raise InputError(f"{a.output}: locate writes a .csv")
        wants_dir = a.task == "render" and a.output.suffix.lower() != ".npy"
        if wants_dir and a.output.is_file():
            raise InputError(f"{a.output}: is a file; render writes PNGs into a directory")
        if not wants_dir and a.output.is_dir():
            raise InputError(f"{a.output}: is a directory; expected a file name")
        a.output.parent.mkdir(parents=True, exist_ok=True)
        _check_writable(a.output, wants_dir)
    except (InputError, OSError) as exc:
        print(f"coordconv client: {_one_line(exc)}", file=sys.stderr)
        return 2
    try:
        summary = asyncio.run(
            run(
                a.task,
                items,
                a.output,
                url=a.url,
                api_key=a.api_key,
                model=a.model,
                version=a.model_version,
                batch_size=a.batch_size,
                concurrency=a.concurrency,
                retries=a.retries,
                timeout=a.timeout,
                retry_window=a.retry_window,
                resume=a.resume,
                quiet=a.quiet,
                min_confidence=getattr(a, "min_confidence", None),
            )
        )
    except JobRefused as exc:
        print(
            f"coordconv client: the service refused the job ({exc}); stopped, nothing more was "
            "sent",
            file=sys.stderr,
        )
        return 2
    except (InputError, OSError) as exc:
        print(f"coordconv client: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("coordconv client: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    print(
        f"{a.task}: {summary.succeeded} done, {summary.skipped} skipped (already done), "
        f"{len(summary.failures)} failed of {summary.total} items in {summary.seconds:.1f}s "
        f"({summary.rate:.0f} items/s, {summary.retries} retries)",
        file=sys.stderr,
    )
    if summary.failures:
        print(
            f"failed items and reasons: {a.output}.failed.csv; the output was not assembled; "
            "rerun with --resume to retry them",
            file=sys.stderr,
        )
        return 1
    print(f"wrote {a.output}", file=sys.stderr)
    return 0
