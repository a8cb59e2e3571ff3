"""``kct config check``: validate ``kct.yaml`` and show what it resolves to.

Exit codes: 0 when the file is valid; otherwise the
:class:`~toolkit.errors.ConfigurationError` propagates and ``kct`` prints
``error: file:line: field: problem`` (every problem, one per line) on stderr
and exits 1. Secrets are never printed: they show as ``***``.

:func:`check_environment` does the same for the ``KCT_*`` variables that
commands without ``--config`` connect with, before any client is built.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from toolkit.config import DeploymentName, HostPorts, KctConfig, StrongRule, load_config
from toolkit.errors import ConfigurationError

__all__ = ["check_environment", "config"]


def _adapted(annotation: Any) -> Callable[[str], None]:
    adapter: TypeAdapter[str] = TypeAdapter(annotation)

    def check(value: str) -> None:
        try:
            adapter.validate_python(value)
        except ValidationError as exc:  # our own messages, which never echo credentials
            raise ValueError(exc.errors(include_url=False)[0]["msg"]) from None

    return check


def _redis_env_url(value: str) -> None:
    """A URL ``redis`` can connect to; it may hold a password, so it is never echoed."""
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("expected a redis://, rediss:// or unix:// URL")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("expected redis://host:port/db, the port is not 1-65535") from None
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("expected unix:///path/to/redis.sock")
    elif not parts.hostname or not re.fullmatch(r"(/[0-9]*)?", parts.path):
        raise ValueError("expected redis://host:port/db (db: a number)")


_ENVIRONMENT: dict[str, Callable[[str], None]] = {
    "KCT_KAFKA_BOOTSTRAP": _adapted(HostPorts),
    "KCT_ZOOKEEPER_HOSTS": _adapted(HostPorts),
    "KCT_REDIS_URL": _redis_env_url,
    "KCT_DEPLOYMENT": _adapted(DeploymentName),
}


def check_environment(
    environ: Mapping[str, str] | None = None, names: Iterable[str] = tuple(_ENVIRONMENT)
) -> None:
    """Raise :class:`ConfigurationError` naming the first malformed ``KCT_*`` variable.

    Unset variables are fine (the local stack's defaults apply); values are
    never echoed where they may hold credentials.
    """
    env = os.environ if environ is None else environ
    for name in names:
        value = env.get(name)
        if value is None:
            continue
        try:
            _ENVIRONMENT[name](value)
        except ValueError as exc:
            raise ConfigurationError(f"{name}: {exc}", variable=name) from None


def _aggregate(value: str) -> tuple[str, str]:
    aggregate_type, sep, aggregate_id = value.partition(":")
    if not (aggregate_type and sep and aggregate_id):
        raise click.BadParameter(f"expected TYPE:ID, got {value!r}", param_hint="--aggregate")
    return aggregate_type, aggregate_id


def _resolve(cfg: KctConfig, aggregate_type: str, aggregate_id: str) -> dict[str, Any]:
    consistency = cfg.consistency
    rule = consistency.rule_for(aggregate_type, aggregate_id)
    return {
        "type": aggregate_type,
        "id": aggregate_id,
        "strong": rule is not None,
        "rule": None if rule is None else consistency.strong.index(rule),
        "timeout": consistency.timeout_for(aggregate_type, aggregate_id),
        "lock_timeout": consistency.lock_timeout_for(aggregate_type, aggregate_id),
        "projections": list(consistency.projections_for(aggregate_type, aggregate_id)),
        "conflicts": list(cfg.conflicts[aggregate_type].strategies)
        if aggregate_type in cfg.conflicts
        else [],
    }


def _match_value(rule: StrongRule) -> str:
    target = rule.id if rule.id is not None else rule.pattern
    if target is None:
        return str(rule.type)
    return target if rule.type is None else f"{rule.type}:{target}"


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title)
    for column in columns:  # the first two never wrap: names and strategies
        table.add_column(column, overflow="fold", no_wrap=column in columns[:2])
    return table


def _add_row(table: Table, *cells: str | Text) -> None:
    """Cells are plain text: a glob like ``[ab]*`` is not rich markup."""
    table.add_row(*(Text(cell) if isinstance(cell, str) else cell for cell in cells))


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _print_summary(cfg: KctConfig, resolved: list[dict[str, Any]]) -> None:
    console = Console()
    kafka, zk, consistency = cfg.kafka, cfg.zookeeper, cfg.consistency
    auth = f"digest ({zk.auth.username})" if zk.auth is not None else "off"
    sasl = f", SASL {kafka.sasl.mechanism} as {kafka.sasl.username}" if kafka.sasl else ""
    redis_auth = "" if cfg.redis.password is None else f" (user {cfg.redis.username or '-'}, ***)"
    console.print(Text("valid", style="green") + Text(f": {cfg.source}"))
    overview = Table(show_header=False, box=None)
    _add_row(overview, "service", cfg.service)
    _add_row(overview, "deployment", cfg.deployment)
    _add_row(overview, "kafka", f"{kafka.bootstrap_servers} ({kafka.security_protocol}{sasl})")
    _add_row(overview, "zookeeper", f"{zk.hosts}, locks under {zk.lock_root}")
    _add_row(
        overview, "", f"auth {auth}, ACL {zk.lock_acl}, session {_seconds(zk.session_timeout)}"
    )
    _add_row(overview, "redis", cfg.redis.redis_url() + redis_auth)
    _add_row(
        overview,
        "consistency",
        f"default timeout {_seconds(consistency.default_timeout)}, lock timeout "
        f"{_seconds(consistency.lock_timeout)}, projections "
        f"{', '.join(consistency.projections) or '-'}",
    )
    console.print(overview)

    rules = _table(
        "strong rules (first match wins; others are eventual)",
        *("#", "match", "value", "timeout", "lock timeout", "projections"),
    )
    resolved_rules = cfg.describe()["consistency"]["strong"]
    for index, (rule, view) in enumerate(zip(consistency.strong, resolved_rules, strict=True)):
        _add_row(
            rules,
            str(index),
            rule.kind,
            _match_value(rule),
            _seconds(view["timeout"]),
            _seconds(view["lock_timeout"]),
            "\n".join(view["projections"]) or "-",
        )
    console.print(rules)

    conflicts = _table(
        "conflict policies",
        *("aggregate type", "strategies", "merge", "dedup", "reorder", "on gap"),
    )
    for aggregate_type, policy in cfg.conflicts.items():
        _add_row(
            conflicts,
            aggregate_type,
            "\n".join(policy.strategies),
            policy.merge or "-",
            str(policy.dedup_window),
            _seconds(policy.reorder_max_wait),
            policy.on_gap,
        )
    console.print(conflicts)

    if resolved:
        table = _table(
            "aggregates", *("aggregate", "strong", "rule", "timeout", "lock timeout", "projections")
        )
        for item in resolved:
            _add_row(
                table,
                f"{item['type']}:{item['id']}",
                Text("yes", style="green") if item["strong"] else "no (eventual)",
                "-" if item["rule"] is None else f"#{item['rule']}",
                _seconds(item["timeout"]),
                _seconds(item["lock_timeout"]),
                "\n".join(item["projections"]) or "-",
            )
        console.print(table)


@click.group()
def config() -> None:
    """Validate and inspect the configuration file (kct.yaml)."""


@config.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--aggregate",
    "aggregates",
    multiple=True,
    metavar="TYPE:ID",
    help="Also show whether this aggregate is strong, its timeouts and projections. Repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the resolved configuration as JSON.")
def check(path: Path, aggregates: tuple[str, ...], as_json: bool) -> None:
    """Validate PATH (every problem with its line) and print what it resolves to."""
    wanted = [_aggregate(value) for value in aggregates]
    cfg = load_config(path)  # a ConfigurationError propagates: kct prints it, exits 1
    resolved = [
        _resolve(cfg, aggregate_type, aggregate_id) for aggregate_type, aggregate_id in wanted
    ]
    if as_json:
        view = cfg.describe()
        if resolved:
            view["aggregates"] = resolved
        click.echo(json.dumps(view, indent=2))
    else:
        _print_summary(cfg, resolved)
