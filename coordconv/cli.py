"""The single `coordconv` command. Subcommands live with the package that does the work and
import their heavy dependencies (torch, onnxruntime, httpx) only when they run."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

# name -> (module, function, one-line help). Each function takes the remaining argv.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("experiments.cli", "train_main", "train one model (task x architecture x split)"),
    "reproduce": ("experiments.cli", "reproduce_main", "train the paper's table, write results/"),
    "export": (
        "experiments.cli",
        "export_main",
        "export a trained run to the model repository",
    ),
    "models": ("experiments.cli", "models_main", "retrain and export the shipped models/"),
    "evaluate": ("experiments.cli", "evaluate_main", "judge the full-canvas models and confidence"),
    "serve": ("service.cli", "main", "serve the model repository over HTTP"),
    "client": ("client.cli", "main", "send files of work to a running service"),
}

EXTRAS = {"experiments": "train", "service": "serve", "client": "client"}


def _usage() -> str:
    lines = ["usage: coordconv COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`coordconv COMMAND --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        from coordconv import __version__

        print(__version__)
        return 0
    if args[0] not in COMMANDS:
        print(f"coordconv: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = COMMANDS[args[0]]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:  # a missing extra, e.g. torch for `train`
        extra = EXTRAS[module_name.split(".")[0]]
        print(
            f"coordconv {args[0]}: missing dependency ({exc.name}); from a checkout: "
            f"`.venv/bin/pip install -e '.[{extra}]'` (the Makefile's targets do it), "
            f"from PyPI: `pip install 'coordconv[{extra}]'`",
            file=sys.stderr,
        )
        return 2
    func: Callable[[list[str]], int] = getattr(module, func_name)
    return func(args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
