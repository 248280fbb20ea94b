"""`coordconv client render|locate`: whole files through a running service.

Exit codes: 0 every item succeeded; 1 some items failed (listed in OUTPUT.failed.csv; rerun with
--resume to retry just those) or, with --min-confidence, some are below it (written, marked and
listed); 2 bad input or options, an output that is not this job's to write, not enough disk, a
service never reached or one that refuses the job itself (nothing more is sent). Every error is
one line on stderr; the last line of a run is its one summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from client.api import (
    DEFAULT_FIRST_CONTACT_S,
    DEFAULT_RETRY_WINDOW,
    DEFAULT_URL,
    Unreachable,
    check_url,
)
from client.files import InputError, Source, read_coords, read_images

_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _integer(text: str) -> int:
    if not re.fullmatch(r"[+-]?[0-9]+", text.strip()):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(text)


def _positive(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _seconds(minimum_exclusive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text) if _DECIMAL.fullmatch(text.strip()) else math.nan
        if not math.isfinite(value) or value < 0 or (minimum_exclusive and value == 0):
            bound = "> 0" if minimum_exclusive else ">= 0"
            raise argparse.ArgumentTypeError(f"must be a number of seconds {bound}, got {text}")
        return value

    return parse


def _fraction(text: str) -> float:
    value = float(text) if _DECIMAL.fullmatch(text.strip()) else math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


URL_HELP = (
    "service URL with its scheme, http:// or https:// (default {default}, env COORDCONV_URL); "
    "one without a scheme is refused, never guessed. An address that never answers (connection "
    "refused, no such host, or no answer within --first-contact-timeout) fails with exit 2 "
    "before the output is touched; retries are for a service that answered"
)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="coordconv client", description="Send files of work to a running service.")
    sub = p.add_subparsers(dest="task", required=True)
    for task, helptext, inp, out in (
        (
            "render",
            "coordinates to images",
            "coords.csv (a header naming x, y and optionally id) or coords.jsonl; numbers are "
            "ASCII decimals in [0, 63]",
            "a folder (NAME.png per item) or an .npy (N, 64, 64)",
        ),
        (
            "locate",
            "images to coordinates",
            "a folder of 64x64 *.png, or an (N, 64, 64) .npy",
            "a .csv with name,x,y,confidence,ok (and below_min_confidence with --min-confidence)",
        ),
    ):
        s = sub.add_parser(
            task,
            help=helptext,
            description=f"{task}: {helptext}. Exit status 0: every item done; 1: some failed"
            f"{' (or are below --min-confidence)' if task == 'locate' else ''}, listed in "
            "OUTPUT.failed.csv; 2: bad input or options, an output that is not this job's, not "
            "enough disk, a service never reached or one that refuses the job.",
        )
        s.add_argument("--input", required=True, type=Path, help=inp)
        s.add_argument("--output", required=True, type=Path, help=out)
        default_url = os.environ.get("COORDCONV_URL", DEFAULT_URL)
        s.add_argument("--url", default=default_url, help=URL_HELP.format(default=DEFAULT_URL))
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
            help="keep retrying a request to a service that answered before (honouring "
            "Retry-After), even past --retries, until the service has been failing for this "
            f"many seconds (default {DEFAULT_RETRY_WINDOW:g}); one outage for the whole job: "
            "later requests then make one attempt each",
        )
        s.add_argument("--timeout", type=_seconds(True), default=30.0, help="seconds per request")
        s.add_argument(
            "--first-contact-timeout",
            type=_seconds(True),
            default=DEFAULT_FIRST_CONTACT_S,
            help="seconds the service has to answer the job's first contact (GET /healthz) "
            f"before anything is written (default {DEFAULT_FIRST_CONTACT_S:g}); one that never "
            "answers is exit 2 with the output as it was",
        )
        if task == "locate":
            s.add_argument(
                "--min-confidence",
                type=_fraction,
                help="mark items whose confidence is below this (or that have none): every "
                "item is still written, with below_min_confidence=true, and listed in "
                "OUTPUT.failed.csv; exit status 1",
            )
        mode = s.add_mutually_exclusive_group()
        mode.add_argument(
            "--resume",
            action="store_true",
            help="continue this same job's output, skipping what is done (over its finished "
            "output: nothing is sent); refused over another job's output",
        )
        mode.add_argument(
            "--overwrite",
            action="store_true",
            help="replace whatever is at --output wholly (a PNG folder: every *.png and the "
            "client's own files; refused if it holds other kinds of files). Without "
            "--overwrite or --resume, an output path that holds anything is refused",
        )
        s.add_argument("--quiet", action="store_true", help="no progress lines (the summary stays)")
    return p


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _names(names: list[str], total: int) -> str:
    shown = ", ".join(names[:5])
    return f"{shown}, ..." if total > 5 else shown


def _fail(message: str) -> int:
    print(f"coordconv client: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str]) -> int:
    from client.batch import JobRefused, run

    a = build_parser().parse_args(argv)
    try:
        url = check_url(a.url)
    except ValueError as exc:
        return _fail(f"--url {exc}")
    items: Source
    try:
        if a.task == "render":
            if a.output.suffix.lower() != ".npy" and a.output.is_file():
                raise InputError(f"{a.output}: is a file; render writes PNGs into a directory")
        elif a.output.suffix.lower() != ".csv":
            raise InputError(f"{a.output}: locate writes a .csv")
        if a.output.suffix.lower() in (".npy", ".csv") and a.output.is_dir():
            raise InputError(f"{a.output}: is a directory; expected a file name")
        items = read_coords(a.input) if a.task == "render" else read_images(a.input)
    except (InputError, OSError) as exc:
        return _fail(_one_line(exc))
    try:
        summary = asyncio.run(
            run(
                a.task,
                items,
                a.output,
                url=url,
                api_key=a.api_key,
                model=a.model,
                version=a.model_version,
                batch_size=a.batch_size,
                concurrency=a.concurrency,
                retries=a.retries,
                timeout=a.timeout,
                retry_window=a.retry_window,
                first_contact=a.first_contact_timeout,
                resume=a.resume,
                overwrite=a.overwrite,
                quiet=a.quiet,
                min_confidence=getattr(a, "min_confidence", None),
            )
        )
    except JobRefused as exc:
        return _fail(f"the service refused the job ({exc}); stopped, nothing more was sent")
    except Unreachable as exc:
        return _fail(
            f"{exc}; nothing was sent. Is it running, and is --url (env COORDCONV_URL) right?"
        )
    except (InputError, OSError) as exc:
        return _fail(_one_line(exc))
    except KeyboardInterrupt:
        print("coordconv client: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    below = ""
    if a.task == "locate" and a.min_confidence is not None:
        below = f", {summary.below} below --min-confidence {a.min_confidence:g}"
    if summary.nothing_to_do:
        tail = f"; {a.output} is this job's finished output, nothing was sent"
    elif summary.output_written:
        tail = f"; wrote {a.output}"
    elif a.output.suffix.lower() in (".npy", ".csv"):
        tail = f"; {a.output} was not assembled"
    else:
        tail = f"; {a.output} is incomplete"
    print(
        f"{a.task}: {summary.succeeded} done, {summary.skipped} skipped (already done), "
        f"{summary.failed} failed{below} of {summary.total} items in {summary.seconds:.1f}s "
        f"({summary.rate:.0f} items/s, {summary.retries} retries){tail}",
        file=sys.stderr,
    )
    failed_csv = summary.failed_file
    if summary.failed:
        names = [n for n, _ in summary.failures]
        print(
            f"coordconv client: {summary.failed} failed ({_names(names, summary.failed)}); "
            f"reasons in {failed_csv}; rerun with --resume to retry them",
            file=sys.stderr,
        )
    if summary.below:
        listed = f" ({_names(summary.below_names, summary.below)})" if summary.below_names else ""
        print(
            f"coordconv client: {summary.below} below --min-confidence "
            f"{a.min_confidence:g}{listed}: written with below_min_confidence=true in "
            f"{a.output} and listed in {failed_csv}",
            file=sys.stderr,
        )
    return 1 if summary.failed or summary.below else 0
