"""The loops a sidecar hosts for its service, from ``kct.yaml``'s ``sidecar`` section.

:class:`SidecarHost` builds, through :class:`~toolkit.runtime.app.Kct`, one
member of each configured projection's consumer group, each saga
participant's, the saga-state projection and a saga watchdog; their handlers
are Python callables by import path or the service's HTTP handlers
(:mod:`connectors.http`). Each loop runs on its own thread; the Kafka, Redis
and ZooKeeper clients stay on the threads that own them.

Guarantees are the loops' own: a projection stores its batch and offsets in
one step, a participant records each step once and publishes in one Kafka
transaction; an HTTP handler's answer is applied through the same batch.
New groups start from the earliest offset; a partition is revoked inside the
consumer's poll, between cycles, so no handler is running on it, and a
runner that lost it cannot store over the new owner (conditional offsets).
Per-key order holds because a key lives in one partition and a loop handles
a partition's records one after the other.

Readiness (:meth:`SidecarHost.readiness`): every loop has joined its group
(received an assignment, possibly empty) and its last cycle succeeded; a
service or backend outage makes the loop unhealthy (paused, backing off),
hence the sidecar not ready, until it heals.

:meth:`SidecarHost.stop` asks every loop to stop after its current cycle;
each then commits what it stored and leaves its group (``close``) on its own
thread; :meth:`SidecarHost.drain` waits for that up to a deadline.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from connectors.http import HttpProjectionHandler, HttpServiceClient, HttpStepAction
from connectors.http.settings import ServiceSettings
from toolkit.config import KctConfig, SidecarConfig, SidecarProjectionConfig
from toolkit.dead_letter import dead_letter_topic
from toolkit.errors import ConfigurationError
from toolkit.projection import GAP_TICK, Handler, Projection
from toolkit.runtime.app import Kct, saga_group
from toolkit.saga.client import SagaClient
from toolkit.saga.definition import SagaDefinition, load_saga_definitions
from toolkit.saga.participant import StepAction
from toolkit.supervision import Health

__all__ = ["HostedLoop", "Readiness", "SidecarHost"]

log = logging.getLogger(__name__)

Kind = Literal["projection", "participant", "saga-state", "watchdog"]


class _Loop(Protocol):
    @property
    def health(self) -> Health: ...


@dataclass
class HostedLoop:
    """One loop of the sidecar and what ``/v1/metadata`` and ``/v1/status`` say of it."""

    name: str
    kind: Kind
    group: str | None
    topics: tuple[str, ...]
    handler: str  # "python:<module:attr>", "http:<path>" or "builtin"
    loop: Any
    run: Callable[[threading.Event], None]
    close: Callable[[], None]
    thread: threading.Thread | None = None
    error: str | None = None  # the loop thread died (a bug): never ready again

    @property
    def health(self) -> Health:
        health: Health = self.loop.health
        return health

    @property
    def joined(self) -> bool:
        """Whether the loop has joined its group (the watchdog has none)."""
        stats = getattr(self.loop, "stats", None)
        if self.kind == "watchdog" or stats is None:
            return True
        if isinstance(stats, Mapping):
            return int(stats.get("assignments", 0)) > 0
        return int(getattr(stats, "assignments", 0)) > 0

    def describe(self) -> dict[str, Any]:
        health = self.health
        view: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "group": self.group,
            "topics": list(self.topics),
            "handler": self.handler,
            "joined": self.joined,
            "healthy": health.healthy and self.error is None,
            "reason": self.error or health.reason,
            "since": health.since,
            "failures": health.failures,
        }
        stats = getattr(self.loop, "stats", None)
        if stats is not None and not isinstance(stats, Mapping):
            view["owned"] = sorted(str(tp) for tp in stats.owned)
            view["applied"] = stats.applied
            view["handler_errors"] = stats.handler_errors
            view["failed_cycles"] = stats.failed_cycles
        elif isinstance(stats, Mapping):
            view["stats"] = {k: int(v) for k, v in sorted(stats.items())}
        return view


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)


class _HttpProjection(Projection):
    """A projection whose every event type (or the listed ones) goes to one handler."""

    def __init__(
        self, name: str, topics: tuple[str, ...], handler: Handler, types: tuple[str, ...]
    ) -> None:
        super().__init__(name, topics)
        self._handler = handler
        self._types = frozenset(types)

    def handler_for(self, event_type: str) -> Handler | None:
        if self._types:
            return self._handler if event_type in self._types else None
        return None if event_type == GAP_TICK else self._handler

    @property
    def event_types(self) -> frozenset[str]:
        return self._types


def import_object(path: str, what: str) -> Any:
    """``module.path:attr`` (dots in ``attr`` walk attributes); ConfigurationError if absent."""
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module's own code failing
        raise ConfigurationError(
            f"cannot import the {what}'s module", path=path, error=f"{type(exc).__name__}: {exc}"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigurationError(f"{what} not found in its module", path=path)
        target = getattr(target, part)
    return target


class SidecarHost:
    """Builds and runs the loops of one sidecar (see the module docstring)."""

    def __init__(self, kct: Kct, config: KctConfig) -> None:
        self.kct = kct
        self.service_name = config.service
        self.settings: SidecarConfig = config.sidecar or SidecarConfig()
        self.base_dir = Path(config.source).parent if config.source != "<string>" else Path()
        self.stopping = threading.Event()
        self.loops: list[HostedLoop] = []
        self._clients: list[HttpServiceClient] = []
        self._service = (
            ServiceSettings.from_config(self.settings.service) if self.settings.service else None
        )
        self.definitions = self._definitions()
        self.saga_state = self.settings.saga_state_projection
        self.sagas: SagaClient | None = (
            kct.saga_client(self.definitions, self.saga_state) if self.definitions else None
        )

    # -- building ----------------------------------------------------------
    def _definitions(self) -> dict[str, SagaDefinition]:
        if self.settings.sagas is None:
            return {}
        loaded = load_saga_definitions(self.base_dir / self.settings.sagas)
        prefix = self.settings.saga_topic_prefix
        if prefix is None:
            return loaded
        return {
            t: d.model_copy(update={"topic_prefix": f"{prefix}.{t}"}) for t, d in loaded.items()
        }

    def _client(self) -> HttpServiceClient:
        assert self._service is not None  # the config's validator requires it
        client = HttpServiceClient(self._service, stopping=self.stopping)
        self._clients.append(client)
        return client

    def build(self) -> SidecarHost:
        """Create the saga topics, then one member of each configured group."""
        self._create_saga_topics()
        for name, entry in self.settings.projections.items():
            self._add_projection(name, entry)
        if self.definitions:
            for name, participant in self.settings.participants.items():
                self._add_participant(
                    name, participant.actions, participant.path, participant.namespace
                )
            if self.settings.saga_state:
                runner = self.kct.saga_state_runner(self.definitions, self.saga_state)
                self._add(
                    self.saga_state,
                    "saga-state",
                    runner,
                    self.saga_state,
                    topics=runner.projection.topics,
                    handler="builtin",
                )
            if self.settings.watchdog:
                watchdog = self.kct.saga_watchdog(self.definitions, self.saga_state)
                self.loops.append(
                    HostedLoop(
                        "watchdog",
                        "watchdog",
                        None,
                        (),
                        "builtin",
                        watchdog,
                        watchdog.run,
                        lambda: None,
                    )
                )
        return self

    def _create_saga_topics(self) -> None:
        topics = [t for d in self.definitions.values() for t in d.topics]
        if topics:
            self.kct.admin.create_topics([*topics, *(dead_letter_topic(t) for t in topics)])

    def _add(
        self, name: str, kind: Kind, loop: Any, group: str, *, topics: tuple[str, ...], handler: str
    ) -> None:
        self.loops.append(
            HostedLoop(name, kind, group, tuple(topics), handler, loop, loop.run, loop.close)
        )

    def _add_projection(self, name: str, entry: SidecarProjectionConfig) -> None:
        if entry.handler is not None:
            projection = import_object(entry.handler, "projection")
            if not isinstance(projection, Projection):
                raise ConfigurationError(
                    "sidecar.projections: the handler path must name a Projection",
                    path=entry.handler,
                )
            if projection.name != name:
                raise ConfigurationError(
                    "sidecar.projections: the Projection's name differs from its entry",
                    entry=name,
                    projection=projection.name,
                )
            handler = f"python:{entry.handler}"
        else:
            assert entry.path is not None
            source = f"kct://{self.service_name}/projections/{name}"
            http = HttpProjectionHandler(self._client(), entry.path, source)
            projection = _HttpProjection(name, entry.topics, http, entry.event_types)
            handler = f"http:{entry.path}"
        runner = self.kct.runner(projection, max_batch=entry.max_batch)
        self._add(name, "projection", runner, name, topics=projection.topics, handler=handler)

    def _add_participant(
        self, name: str, actions_path: str | None, path: str | None, namespace: str
    ) -> None:
        actions: Mapping[str, StepAction]
        if actions_path is not None:
            found = import_object(actions_path, "participant's actions")
            if not isinstance(found, Mapping):
                raise ConfigurationError(
                    "sidecar.participants: 'actions' must name a mapping of action names "
                    "to callables",
                    path=actions_path,
                )
            actions, handler = found, f"python:{actions_path}"
        else:
            assert path is not None
            client = self._client()
            source = f"kct://{self.service_name}/participants/{name}"
            names = {
                a
                for d in self.definitions.values()
                for s in d.steps
                if s.participant == name
                for a in (s.command, s.compensation)
                if a is not None
            }
            actions = {a: HttpStepAction(client, path, source, a) for a in sorted(names)}
            handler = f"http:{path}"
        participant = self.kct.saga_participant(
            name, self.definitions, actions, namespace=namespace
        )
        types = [t for t, d in self.definitions.items() if name in d.participants]
        group = saga_group(self.kct.settings.deployment, name, types, namespace)
        topics = tuple(sorted({self.definitions[t].command_topic(name) for t in types}))
        self._add(name, "participant", participant, group, topics=topics, handler=handler)

    # -- running -----------------------------------------------------------
    def start(self) -> None:
        for hosted in self.loops:
            hosted.thread = threading.Thread(
                target=self._run,
                args=(hosted,),
                name=f"kct-{hosted.kind}-{hosted.name}",
                daemon=True,
            )
            hosted.thread.start()

    def _run(self, hosted: HostedLoop) -> None:
        try:
            hosted.run(self.stopping)
        except Exception as exc:  # a bug: report it, never ready again
            hosted.error = f"loop ended: {type(exc).__name__}: {exc}"[:500]
            log.exception("%s %s: loop ended", hosted.kind, hosted.name)
        finally:
            try:
                hosted.close()  # commit what is stored, leave the group
            except Exception:
                log.exception("%s %s: close failed", hosted.kind, hosted.name)

    def stop(self) -> None:
        """Ask every loop to stop after its cycle (and HTTP retries to give up)."""
        self.stopping.set()

    def drain(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` s for the loops to finish; the names still running."""
        self.stop()
        deadline = time.monotonic() + timeout
        for hosted in self.loops:
            if hosted.thread is not None:
                hosted.thread.join(max(0.0, deadline - time.monotonic()))
        late = [h.name for h in self.loops if h.thread is not None and h.thread.is_alive()]
        for client in self._clients:
            client.close()
        return late

    # -- reporting ---------------------------------------------------------
    def readiness(self) -> Readiness:
        reasons: list[str] = []
        if self.stopping.is_set():
            reasons.append("draining")
        for hosted in self.loops:
            health = hosted.health
            if hosted.error is not None:
                reasons.append(f"{hosted.name}: {hosted.error}")
            elif not health.healthy:
                reasons.append(f"{hosted.name}: {health.reason or 'unhealthy'}")
            elif not hosted.joined:
                reasons.append(f"{hosted.name}: not yet assigned by its group")
        return Readiness(not reasons, tuple(reasons))

    def describe(self) -> list[dict[str, Any]]:
        return [hosted.describe() for hosted in self.loops]
