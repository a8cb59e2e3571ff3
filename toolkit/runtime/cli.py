"""The ``kct`` command line."""

from __future__ import annotations

import logging
import sys

import click

from toolkit.errors import ToolkitError
from toolkit.runtime.config_cli import config
from toolkit.runtime.saga_cli import saga
from toolkit.runtime.stack_cli import stack


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug details (never secrets).")
def cli(verbose: bool) -> None:
    """kct: per-aggregate consistency on Apache Kafka."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@cli.command()
@click.option("--events", default=6, show_default=True, help="How many order events to publish.")
@click.option(
    "--orders",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="How many order fulfillment sagas to run (about 25 % with a declined card).",
)
@click.option(
    "--use-running-kafka",
    is_flag=True,
    help="Do not start the local stack; use KCT_KAFKA_BOOTSTRAP (or the default) as is.",
)
def demo(events: int, orders: int, use_running_kafka: bool) -> None:
    """Run the demo on the local stack (starting it if needed)."""
    from toolkit.runtime.demo import run_demo

    run_demo(events=events, orders=orders, start_stack=not use_running_kafka)


cli.add_command(stack)
cli.add_command(config)
cli.add_command(saga)


def main() -> None:
    """Console entry point: toolkit errors become a one-line message and exit 1."""
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ToolkitError as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
