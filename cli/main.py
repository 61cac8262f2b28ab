"""The `nearline` command line: one entry point, one config system, one store.

Every command takes `--config FILE` (default: conf/local.yaml when it exists in the working
directory) and any number of `--set section.key=value` overrides, before or after the command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nearline.config import ConfigError, load_config

log = logging.getLogger("nearline")

# Every top-level command: the module whose `register(subparsers)` adds it, and its one-line help. The
# help lives here, not in the module, so that `nearline --help` lists every command without importing
# the modules (with them torch, pyspark, sklearn and faiss: seconds before anything is printed).
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("cli.generate", "write the seeded synthetic dataset (Spark)"),
    "import": ("cli.imports", "convert a public dataset into the data contract (Spark)"),
    "validate": ("cli.validate", "check a dataset against the data contract"),
    "submit": ("cli.submit", "print (or --run) the spark-submit command for a job"),
    "features": ("cli.features", "build point-in-time ranking rows (Spark)"),
    "ranker": ("cli.ranker", "train the split-network ranker"),
    "ranker-distributed": (
        "cli.ranker", "`ranker train` with data-parallel training under TorchDistributor"
    ),
    "export": ("cli.export", "compute and store embeddings in batch (Spark)"),
    "refresh": ("cli.refresh", "rebuild and publish every artifact once (validated)"),
    "runs": ("cli.refresh", "list recent refresh/job runs"),
    "schedule": ("cli.schedule", "run refresh on the configured cron schedule"),
    "eval": ("cli.evaluate", "offline evaluation"),
    "serve": ("cli.serve", "run the Ray Serve app on a local Ray until Ctrl-C / SIGTERM"),
    "query": ("cli.serve", "call the serving app over HTTP and print the JSON answer"),
    "rollback": (
        "cli.serve", "return serving to the previously published coherent versions (serving follows by poll)"
    ),
    "content": ("cli.content", "the DeepMoji-style content model"),
    "index": ("cli.index", "build, validate, publish and evaluate FAISS indexes"),
}

DEFAULT_CONFIG = "conf/local.yaml"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}  success, or nothing to do (a refresh with every stage unchanged)
  {EXIT_FAILED}  the job ran and failed or was refused: a gate refused an index, a refresh stage
     failed, validation found problems, the store or the serving app refused the request
  {EXIT_USAGE}  usage or config error: bad arguments, config file or --set, a bad input value or path
"""


class NearlineParser(argparse.ArgumentParser):
    """An ArgumentParser without prefix matching, so that `--s` is an error, not silently `--set`.

    Subparsers inherit the class (argparse creates them with ``type(parent)``), so every nested
    command gets the same rule without each module asking for it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


class _CommandsAction(argparse._SubParsersAction):
    """The top-level subparsers: each command's help line comes from COMMANDS."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if name not in COMMANDS:
            raise LookupError(f"command {name!r} is not in cli.main.COMMANDS: add it there with its module")
        if "help" in kwargs:
            raise TypeError(f"command {name!r}: its help line belongs in cli.main.COMMANDS, not in register()")
        summary = COMMANDS[name][1]
        kwargs.setdefault("description", summary)
        return super().add_parser(name, help=summary, **kwargs)


class _VersionAction(argparse.Action):
    """`--version` from the package metadata, read only when asked: under `submit --deploy-mode cluster`
    the code runs from a zip without installed metadata, and every other command must still work there."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("nearline")
        except PackageNotFoundError:
            text = "unknown (the nearline package is not installed here)"
        print(f"nearline {text}")
        parser.exit()


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count or limit, where 0 would mean nothing or, worse, everything)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _common_options() -> argparse.ArgumentParser:
    common = NearlineParser(prog="nearline", add_help=False)
    common.add_argument("--config", help=f"YAML config (default: {DEFAULT_CONFIG} if it exists here)")
    common.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config value, e.g. --set generate.num_users=5000 (repeatable)",
    )
    return common


def build_parser(load: Iterable[str] = ()) -> argparse.ArgumentParser:
    """The `nearline` parser.

    Args:
        load: commands whose module is imported to register its full arguments; every other command
            gets only its name and help line, enough for `--help` and for argparse to reject typos.
    """
    parser = NearlineParser(
        prog="nearline", description=__doc__, epilog=EXIT_CODES, parents=[_common_options()],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction, help="print the installed version and exit")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, action=_CommandsAction,
    )
    modules_to_load = {COMMANDS[name][0] for name in load}
    registered: set[str] = set()
    for name, (module_name, _) in COMMANDS.items():
        if module_name in modules_to_load:
            if module_name not in registered:
                importlib.import_module(module_name).register(commands)
                registered.add(module_name)
        else:
            commands.add_parser(name)
    return parser


def _command_name(args: list[str]) -> str | None:
    """The command in args (with --config/--set already removed): the first word that is not an option."""
    return next((arg for arg in args if not arg.startswith("-")), None)


def default_config_path(config_path: str | None) -> str | None:
    if config_path is None and Path(DEFAULT_CONFIG).is_file():
        return DEFAULT_CONFIG
    return config_path


def _describe_config(given: str | None, used: str | None, overrides: list[str]) -> str:
    if given is not None:
        source = f"{given} (--config)"
    elif used is not None:
        source = f"{used} (the default, found in the working directory {Path.cwd()})"
    else:
        source = f"built-in defaults (no --config, and no {DEFAULT_CONFIG} in {Path.cwd()})"
    return source + (f"; overrides: {', '.join(overrides)}" if overrides else "")


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (see EXIT_CODES)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        common_args, rest = _common_options().parse_known_args(argv)
        command = _command_name(rest)
        args = build_parser([command] if command in COMMANDS else []).parse_args(rest)
    except SystemExit as exc:
        # argparse exits on --help/--version (0) and on usage errors (2); callers get the code, not an exit.
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.config_path = default_config_path(common_args.config)
    args.config_overrides = common_args.overrides
    try:
        config = load_config(args.config_path, common_args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    log.info("config: %s", _describe_config(common_args.config, args.config_path, common_args.overrides))
    # A process boundary: one clear line for the operator; the traceback adds nothing for these.
    try:
        return int(args.handler(args, config) or EXIT_OK)
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        # Input the command was given (an argument, a path, a config value) is wrong: fix the call, not retry.
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as exc:
        # The job ran and failed, or a gate or the store refused it (StoreError, GateFailed).
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
