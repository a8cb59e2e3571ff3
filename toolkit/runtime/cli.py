"""The ``kct`` command line.

No user input makes ``kct`` print a Python traceback or a secret: :func:`main`
turns a :class:`~toolkit.errors.ToolkitError` (configuration, connection,
consistency, stack) and an ``OSError`` into one ``error: ...`` line on stderr
and exit code 1, invalid options into click's usage error and exit code 2, and
anything unexpected into ``error: unexpected <type>: ...`` and exit code 1
(``-v`` adds the traceback for a bug report). Every ``error:`` line has URL
credentials and ``password=...``-like values masked.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import click

from toolkit.errors import ToolkitError
from toolkit.runtime.config_cli import check_environment, config
from toolkit.runtime.dashboard.cli import dashboard
from toolkit.runtime.dlq_cli import dlq
from toolkit.runtime.monitor_cli import lag, monitor, status
from toolkit.runtime.redaction import redact
from toolkit.runtime.saga_cli import saga
from toolkit.runtime.sidecar.cli import sidecar
from toolkit.runtime.stack.cli import stack
from toolkit.runtime.trace_cli import trace

log = logging.getLogger("toolkit.runtime.cli")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug details (never secrets).")
def cli(verbose: bool) -> None:
    """kct: per-aggregate consistency on Apache Kafka."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@cli.command()
@click.option(
    "--events",
    default=6,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="How many order events to publish.",
)
@click.option(
    "--orders",
    default=20,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="How many order fulfillment sagas to run (about 25 % with a declined card).",
)
@click.option(
    "--use-running-kafka",
    is_flag=True,
    help="Do not start the local stack; use KCT_KAFKA_BOOTSTRAP (or the default) as is.",
)
def demo(events: int, orders: int, use_running_kafka: bool) -> None:
    """Run the demo on the local stack (starting it if needed)."""
    if use_running_kafka:  # connections come from KCT_*: refuse malformed ones up front
        check_environment()
    from toolkit.runtime.demo import run_demo

    run_demo(events=events, orders=orders, start_stack=not use_running_kafka)


cli.add_command(stack)
cli.add_command(config)
cli.add_command(saga)
cli.add_command(dlq)
cli.add_command(status)
cli.add_command(lag)
cli.add_command(monitor)
cli.add_command(trace)
cli.add_command(sidecar)
cli.add_command(dashboard)


def _fail(message: str, code: int = 1) -> None:
    click.secho(f"error: {redact(message)}", fg="red", err=True)
    sys.exit(code)


def main(args: Sequence[str] | None = None) -> None:
    """Console entry point (``args`` default to ``sys.argv[1:]``); never a traceback."""
    try:
        cli(args=args, standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ToolkitError as exc:
        _fail(str(exc))
    except BrokenPipeError:  # `kct ... | head`: the reader left; say nothing more
        sys.stderr.close()
        sys.exit(1)
    except RecursionError:
        _fail("input nested too deeply")
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        _fail(f"{exc.strerror or type(exc).__name__}{where}")
    except Exception as exc:  # a bug, not bad input: still no traceback unless -v
        log.debug("unexpected error", exc_info=True)
        first = (str(exc).splitlines() or [""])[0][:300]
        _fail(f"unexpected {type(exc).__name__}: {first} (a bug: please report it; -v shows more)")


if __name__ == "__main__":
    main()
