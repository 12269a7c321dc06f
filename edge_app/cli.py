"""``edge-emotion`` (also ``python -m edge_app``): global options, then one subcommand.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``main(args, config) -> int``;
only the chosen one is imported, so ``edge-emotion check`` does not pay for the web UI and a build without a
module still runs the others. The global options work before or after the subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from edge_app.config import LOG_LEVELS, ConfigError, configure_logging, load_config

log = logging.getLogger(__name__)

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("edge_app.commands.run", "watch the camera and publish aggregated emotions over MQTT (the service)"),
    "check": ("edge_app.commands.check", "measure the deployed model's accuracy on labelled faces on this device"),
    "annotate": ("edge_app.commands.annotate", "draw faces and emotions onto photos or a video (stays here)"),
    "bench": ("edge_app.commands.bench", "time each pipeline stage on this device and print JSON"),
    "ui": ("edge_app.commands.ui", "local web page: upload a photo, see each face's emotions"),
}
USAGE_ERROR = 2


class SubcommandUnavailable(Exception):
    """The module behind a subcommand is not part of this build."""


def _add_global_options(parser: argparse.ArgumentParser, suffix: str, default: object) -> None:
    parser.add_argument("--config", metavar="PATH", dest="config" + suffix, default=default,
                        help="config file (default: ./config.yaml if present, else built-in defaults)")
    parser.add_argument("--set", metavar="KEY=VALUE", dest="overrides" + suffix, action="append",
                        default=default, help="override a config value, e.g. mqtt.port=1884 (repeatable)")
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, dest="log_level" + suffix,
                        default=default, help="override logging.level")


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="edge-emotion", description="Facial emotion recognition on the edge, aggregated over MQTT.",
        epilog="Config values can also be set with environment variables EDGE_EMOTION__SECTION__KEY=value.",
    )
    _add_global_options(parser, "", None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subparsers = {}
    for name, (_, help_text) in SUBCOMMANDS.items():
        subparsers[name] = commands.add_parser(name, help=help_text, description=help_text)
        _add_global_options(subparsers[name], "_after", argparse.SUPPRESS)
    return parser, subparsers


def _probe(argv: Sequence[str]) -> argparse.Namespace | None:
    """The global options (wherever they stand) and the subcommand's name, before any module is imported.

    None when ``argv`` does not parse; the full parser then prints the usage error.
    """
    probe = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_global_options(probe, "", None)
    probe.add_argument("command", nargs="?")
    try:
        known, _ = probe.parse_known_args(argv)
    except SystemExit:
        return None
    return known


def load_subcommand(name: str) -> ModuleType:
    """Import the module behind a subcommand; SubcommandUnavailable when this build lacks it."""
    module_name = SUBCOMMANDS[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise SubcommandUnavailable(f"subcommand {name} is not available in this build") from None
        raise SubcommandUnavailable(
            f"subcommand {name} needs the Python module {exc.name!r}, which is not installed"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, subparsers = _parser()
    known = _probe(argv)
    if known is None or known.command not in SUBCOMMANDS or {"-h", "--help"} & set(argv):
        if known is not None and known.command in SUBCOMMANDS:
            try:
                _add_subcommand_arguments(known.command, subparsers)
            except SubcommandUnavailable as exc:
                print(f"error: {exc}", file=sys.stderr)
                return USAGE_ERROR
        parser.parse_args(argv)  # prints help or the usage error and exits
        return USAGE_ERROR
    overrides = list(known.overrides or [])
    if known.log_level:
        overrides.append(f"logging.level={known.log_level}")
    try:
        config = load_config(known.config, overrides)
        module = _add_subcommand_arguments(known.command, subparsers)
    except (ConfigError, SubcommandUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    args = parser.parse_args(argv)
    configure_logging(config)
    try:
        return int(module.main(args, config) or 0)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        log.info("interrupted")
        return 130


def _add_subcommand_arguments(command: str, subparsers: dict[str, argparse.ArgumentParser]) -> ModuleType:
    module = load_subcommand(command)
    module.add_arguments(subparsers[command])
    return module
