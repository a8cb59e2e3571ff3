"""Kafka transactions, implementing the ``TransactionalProducer`` port.

``KafkaTransactionalProducer`` owns one transactional librdkafka producer
(``transactional.id`` unique per process: Kafka fences an older instance with
the same id). It runs one transaction at a time; :meth:`begin` blocks while
another thread's transaction is open. Inside a :class:`KafkaTransaction`,
``produce`` returns each record's position once the broker acknowledged it
(the records stay invisible to ``read_committed`` readers until commit), and
``send_offsets`` adds a consumer group's offsets to the transaction.

Error classes, as librdkafka defines them, each handled here:

* an error that ``txn_requires_abort()`` (a record rejected, the transaction
  timed out on the broker): the transaction is aborted and
  ``TransactionAborted`` raised; nothing of it is visible. After a rejected
  record the producer is also re-created: librdkafka's next transaction
  would otherwise fail on skipped sequence numbers;
* a retriable error on commit (a timeout, a coordinator moving): commit is
  retried a bounded number of times; if it still fails the outcome is
  unknown, so the producer is re-created (``init_transactions`` makes the
  broker finish or abort the old transaction before any new one can start:
  a late commit marker can never commit a later transaction) and
  ``PublishError(outcome="unknown")`` is raised;
* fenced, after a transaction that stayed open past ``transaction.timeout.ms``
  (a GC or VM pause, SIGSTOP): the broker aborted it and bumped the epoch,
  which Kafka 4 reports exactly like fencing although no other producer
  exists. That operation fails with ``TransactionAborted``
  (``cause="transaction_timeout"``), the producer is re-created and the next
  transaction works;
* fenced while the transaction was younger than its timeout: a newer
  producer took the same ``transactional.id``. This instance is a zombie; it
  closes itself and raises ``PublishError`` (``cause="fenced"``), and never
  re-initialises (that would fence the newer one in turn);
* any other fatal error: the producer is re-created and ``PublishError``
  raised;
* a re-creation that cannot reach Kafka (``init_transactions`` times out, e.g.
  with the cluster's quorum lost): the producer is marked stale and the next
  :meth:`begin` re-creates it first (``PublishError`` while Kafka is still
  away), so no transaction ever starts on a producer whose last transaction
  is unresolved; a ``begin_transaction`` refused for such a state (an abort
  still pending) marks it stale too and raises ``PublishError``.

A transaction left open (its context manager exited without commit) is
aborted.

Every call that waits for the brokers inside a transaction
(``send_offsets_to_transaction``, ``commit_transaction``,
``abort_transaction``) runs on a worker thread under a hard deadline of twice
the operation timeout (``init_transactions`` does not: abandoned, it could
still complete and fence its successor). librdkafka does not always honour its own timeout:
with the group coordinator killed, ``send_offsets_to_transaction`` can block
for good (librdkafka issues 5456 and 5511), and the loop calling it with it.
Past the deadline the stuck call is abandoned with its producer (the thread
stays blocked in C, holding nothing of ours), the producer is re-created, and
the operation fails: ``TransactionAborted`` before a commit was asked for
(the new producer's ``init_transactions`` aborts the open transaction),
``PublishError(outcome="unknown")`` once it was.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from types import TracebackType
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as KafkaTopicPartition

from connectors.kafka.errors import delivery_failure, kafka_error
from connectors.kafka.producer import DeliveryBatch
from connectors.kafka.settings import KafkaSettings
from toolkit.errors import ConfigurationError, PublishError, TransactionAborted
from toolkit.ports import OutgoingRecord
from toolkit.positions import Position, TopicPartition

__all__ = ["KafkaTransaction", "KafkaTransactionalProducer"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

_FENCED = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)


class CallHung(Exception):
    """A librdkafka call that did not return by its hard deadline (abandoned)."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"{what} did not return within {seconds:g}s")
        self.what = what
        self.seconds = seconds


class _BoundedCalls:
    """Runs blocking librdkafka calls on a worker thread, waiting at most a deadline.

    A call past its deadline is abandoned: its worker stays blocked in C and
    a new worker serves the next call. Workers are daemon threads on purpose
    (not a ThreadPoolExecutor, whose exit hook joins its threads): a stuck
    one must never keep the process from exiting.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] | None = None

    def _new_worker(self) -> queue.SimpleQueue[_Job | None]:
        jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        threading.Thread(target=_serve, args=(jobs,), name=self._name, daemon=True).start()
        return jobs

    def run(self, what: str, call: Callable[[], _T], deadline: float) -> _T:
        jobs = self._jobs
        if jobs is None:
            jobs = self._jobs = self._new_worker()
        future: Future[_T] = Future()
        jobs.put((future, call))
        try:
            return future.result(timeout=deadline)
        except FutureTimeout:
            self._jobs = None  # the next call gets a new worker
            jobs.put(None)  # this one ends if the call ever returns
            raise CallHung(what, deadline) from None

    def close(self) -> None:
        if self._jobs is not None:
            self._jobs.put(None)
            self._jobs = None


_Job = tuple["Future[Any]", Callable[[], Any]]


def _serve(jobs: queue.SimpleQueue[_Job | None]) -> None:
    while (job := jobs.get()) is not None:
        future, call = job
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(call())
            except BaseException as exc:  # handed to the caller, raised there
                future.set_exception(exc)


def _boot_clock() -> float:
    """Seconds on a clock that keeps counting while the process or VM is paused."""
    return time.clock_gettime(_CLOCK)


_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


class KafkaTransactionalProducer:
    """One transactional producer; one open transaction at a time."""

    def __init__(
        self,
        settings: KafkaSettings,
        transactional_id: str,
        *,
        transaction_timeout_ms: int = 15_000,
        operation_timeout: float = 10.0,
        commit_attempts: int = 3,
        linger_ms: int = 1,
    ) -> None:
        if not transactional_id:
            raise ConfigurationError("a transactional producer needs a transactional_id")
        self.transactional_id = transactional_id
        self._config = settings.client_config(**{"linger.ms": linger_ms})
        self._config.update(
            {
                "transactional.id": transactional_id,
                "transaction.timeout.ms": transaction_timeout_ms,
                "enable.idempotence": True,
                "acks": "all",
            }
        )
        self._timeout = operation_timeout
        # librdkafka may overrun its own timeout (a coordinator moving); past
        # twice it, a call is taken for hung (see the module's docstring).
        self._hard_deadline = operation_timeout * 2
        self._calls = _BoundedCalls("kct-txn-call")
        self._transaction_timeout_ms = transaction_timeout_ms
        # When the open transaction began (boot-time clock: counts a suspended VM too).
        self._began_at: float | None = None
        self._commit_attempts = commit_attempts
        # One transaction at a time: held from begin() until commit or abort.
        self._turn = threading.Lock()
        self._closed = threading.Event()
        # True when the producer must be re-created before the next transaction.
        self._stale = False
        self._producer = self._new_producer()
        self._poller = threading.Thread(
            target=self._serve_delivery_reports, name="kct-txn-poller", daemon=True
        )
        self._poller.start()

    def _new_producer(self) -> Producer:
        try:
            producer = Producer(self._config)
        except KafkaException as exc:
            raise PublishError(f"invalid producer configuration: {exc.args[0]}") from exc
        # Called directly, not under the hard deadline: an abandoned
        # init_transactions that completed later would bump the epoch and fence
        # the producer created after it (seen with two brokers down).
        try:
            producer.init_transactions(self._timeout)
        except KafkaException as exc:
            error = kafka_error(exc)
            raise PublishError(
                f"cannot initialise transactions: {error.str()}",
                transactional_id=self.transactional_id,
                code=error.name(),
            ) from exc
        return producer

    def bounded(self, what: str, call: Callable[[], _T]) -> _T:
        """``call()`` on the worker thread; ``CallHung`` past the hard deadline."""
        return self._calls.run(what, call, self._hard_deadline)

    def call_bounded(self, what: str, call: Callable[[], _T]) -> _T:
        """A transactional call on the worker thread, its errors translated."""
        return self._call(what, lambda: self.bounded(what, call))

    def abandon(self, hung: CallHung) -> None:
        """A call on the producer hung: leave it to its thread and start a new
        producer (its ``init_transactions`` fences the old one and aborts the
        open transaction); stale if Kafka cannot be reached yet."""
        log.warning(
            "%s on %s: %s (a librdkafka hang); re-creating the producer",
            hung.what,
            self.transactional_id,
            hung,
        )
        with contextlib.suppress(PublishError):
            self.reinitialise()

    def reinitialise(self) -> None:
        """Replace the producer (after a fatal or indefinite error)."""
        log.warning("re-initialising transactional producer %s", self.transactional_id)
        # The old instance is dropped: the new one's init_transactions fences it.
        try:
            self._producer = self._new_producer()
        except PublishError:
            self._stale = True  # Kafka unreachable: the next begin() tries again
            raise
        self._stale = False

    def _serve_delivery_reports(self) -> None:
        while not self._closed.is_set():
            try:
                self._producer.poll(0.1)
            except KafkaException as exc:  # fatal: the next call reports it
                log.debug("transactional poll: %s", exc)
                time.sleep(0.1)

    @property
    def producer(self) -> Producer:
        return self._producer

    def begin(self) -> KafkaTransaction:
        """Start a transaction (waits for the current one, if any, to end)."""
        if self._closed.is_set():
            raise PublishError("producer is closed", transactional_id=self.transactional_id)
        if not self._turn.acquire(timeout=self._timeout * 3):
            raise PublishError(
                "another transaction of this producer stayed open",
                transactional_id=self.transactional_id,
            )
        try:
            if self._stale:
                self.reinitialise()
            self._call("begin_transaction", self._producer.begin_transaction)
        except KafkaException as exc:
            # Refused for the producer's state (an abort that never finished):
            # re-create it before the next transaction.
            self._stale = True
            self._turn.release()
            error = kafka_error(exc)
            raise PublishError(
                f"begin_transaction failed: {error.str()}",
                transactional_id=self.transactional_id,
                code=error.name(),
            ) from exc
        except BaseException:
            self._turn.release()
            raise
        self._began_at = _boot_clock()
        return KafkaTransaction(self)

    def _outlived_timeout(self) -> float | None:
        """Seconds the open transaction has lasted, if past transaction.timeout.ms."""
        if self._began_at is None:
            return None
        elapsed = _boot_clock() - self._began_at
        return elapsed if elapsed * 1000 >= self._transaction_timeout_ms else None

    def _fenced(self, what: str, error: KafkaError) -> PublishError:
        """A fencing error: the broker's abort of an overdue transaction (re-create
        the producer, fail this operation) or a newer producer (close for good)."""
        elapsed = self._outlived_timeout()
        if elapsed is not None:
            log.warning(
                "transaction of %s was open %.1fs, past its %d ms timeout: the broker "
                "aborted it; re-creating the producer",
                self.transactional_id,
                elapsed,
                self._transaction_timeout_ms,
            )
            self.reinitialise()
            return TransactionAborted(
                f"{what} failed: the transaction stayed open {elapsed:.1f}s, past "
                f"transaction.timeout.ms ({self._transaction_timeout_ms} ms; a pause?), "
                "and the broker aborted it; nothing of it is visible and the producer "
                "was re-created, so the operation can be retried",
                transactional_id=self.transactional_id,
                code=error.name(),
                cause="transaction_timeout",
            )
        # Another producer owns our transactional.id now: re-initialising
        # would fence it in turn. This instance is a zombie: stop.
        self._closed.set()
        return PublishError(
            f"{what} failed: fenced by a newer producer with the same "
            "transactional.id (two processes share a node id?); this producer "
            "is closed",
            transactional_id=self.transactional_id,
            code=error.name(),
            cause="fenced",
        )

    def _call(self, what: str, call: Callable[[], _T]) -> _T:
        """Run a transactional call, translating its error classes."""
        try:
            return call()
        except KafkaException as exc:
            error = kafka_error(exc)
            if error.code() in _FENCED:
                raise self._fenced(what, error) from exc
            if error.fatal():
                self.reinitialise()
                raise PublishError(
                    f"{what} failed fatally: {error.str()}",
                    transactional_id=self.transactional_id,
                    code=error.name(),
                ) from exc
            raise

    def _end(self) -> None:
        self._began_at = None
        self._turn.release()

    def close(self, timeout: float = 10.0) -> None:
        if self._closed.is_set():
            return
        try:
            self._producer.flush(timeout)
        finally:
            self._closed.set()
            self._calls.close()
            self._poller.join(timeout=1)


class KafkaTransaction:
    """An open transaction; use as a context manager (exit without commit aborts)."""

    def __init__(self, owner: KafkaTransactionalProducer) -> None:
        self._owner = owner
        self._done = False

    def __enter__(self) -> KafkaTransaction:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._done:
            self.abort()

    def _check_open(self) -> None:
        if self._done:
            raise PublishError("transaction already ended")

    def produce(self, records: Sequence[OutgoingRecord]) -> list[Position]:
        """Write records into the transaction; returns their positions once acknowledged."""
        self._check_open()
        producer = self._owner.producer
        batch = DeliveryBatch(len(records))
        deadline = time.monotonic() + self._owner._timeout * 3
        for index, record in enumerate(records):
            while True:
                try:
                    producer.produce(
                        record.topic,
                        value=record.value,
                        key=record.key,
                        headers=list(record.headers),
                        on_delivery=batch.callback(index),
                        partition=-1 if record.partition is None else record.partition,
                    )
                    break
                except BufferError:
                    if time.monotonic() > deadline:
                        self._fail("local producer queue stayed full", record.topic)
                    producer.poll(0.05)
                except KafkaException as exc:
                    self._fail(f"record not accepted: {kafka_error(exc).str()}", record.topic)
        if not batch.done.wait(max(0.0, deadline - time.monotonic())):
            self._fail(f"records {delivery_failure(None)}", records[0].topic if records else None)
        if batch.errors:
            index, error = batch.errors[0]
            if error.code() in _FENCED:
                self._fail_fenced(error)
            self._fail(f"record not written: {delivery_failure(error)}", records[index].topic)
        return [p for p in batch.positions if p is not None]

    def send_offsets(self, offsets: Mapping[TopicPartition, int], group_metadata: Any) -> None:
        """Commit a consumer group's offsets as part of this transaction."""
        self._check_open()
        wanted = [KafkaTopicPartition(tp.topic, tp.partition, o) for tp, o in offsets.items()]
        owner = self._owner
        producer, timeout = owner.producer, owner._timeout
        try:
            owner.call_bounded(
                "send_offsets_to_transaction",
                lambda: producer.send_offsets_to_transaction(wanted, group_metadata, timeout),
            )
        except KafkaException as exc:
            self._fail(f"offsets not added: {kafka_error(exc).str()}", None)
        except CallHung as hung:
            self._abandon(hung)
            # No commit was asked for: the new producer's init aborted it.
            raise TransactionAborted(
                f"transaction aborted: offsets not added: {hung}; the producer was re-created",
                transactional_id=owner.transactional_id,
                cause="hung",
            ) from None

    def _abandon(self, hung: CallHung) -> None:
        """End this transaction without touching its stuck producer; replace it."""
        try:
            self._owner.abandon(hung)
        finally:
            self._finish()

    def _fail_fenced(self, error: KafkaError) -> None:
        """A record refused as fenced: decide what it means, end the transaction, raise."""
        if self._done:
            raise PublishError("transaction already ended")
        verdict = self._owner._fenced("produce", error)
        self._finish()  # the broker or the new epoch already aborted it
        raise verdict

    def _fail(self, reason: str, topic: str | None) -> None:
        """Abort and raise: nothing of this transaction becomes visible."""
        if not self._done:
            try:
                self._abort_quietly()
                if not self._owner._closed.is_set():
                    # After a rejected record librdkafka's next transaction can still
                    # fail on skipped sequence numbers; a new epoch starts clean.
                    # Kafka unreachable: stale, re-created by the next begin().
                    with contextlib.suppress(PublishError):
                        self._owner.reinitialise()
            finally:
                self._finish()
        raise TransactionAborted(
            f"transaction aborted: {reason}",
            topic=topic,
            transactional_id=self._owner.transactional_id,
        )

    def commit(self) -> None:
        """Commit; raises TransactionAborted (nothing visible) or PublishError
        with ``outcome="unknown"`` (the producer was re-created)."""
        self._check_open()
        owner = self._owner
        producer = owner.producer
        try:
            for attempt in range(1, owner._commit_attempts + 1):
                try:
                    owner.call_bounded(
                        "commit_transaction", lambda: producer.commit_transaction(owner._timeout)
                    )
                    return
                except CallHung as hung:
                    owner.abandon(hung)
                    raise PublishError(
                        f"transaction outcome unknown: {hung}; the producer was re-created",
                        transactional_id=owner.transactional_id,
                        code="hung",
                        outcome="unknown",
                    ) from None
                except PublishError as exc:
                    if attempt == 1:
                        raise
                    # Fenced on a retry: the first attempt may have committed
                    # before the epoch moved on (seen with a coordinator killed).
                    raise PublishError(
                        f"transaction outcome unknown: a retried commit failed: {exc}",
                        transactional_id=owner.transactional_id,
                        outcome="unknown",
                    ) from exc
                except KafkaException as exc:
                    error = kafka_error(exc)
                    if error.txn_requires_abort():
                        self._abort_quietly()
                        raise TransactionAborted(
                            f"transaction aborted on commit: {error.str()}",
                            transactional_id=owner.transactional_id,
                            code=error.name(),
                        ) from exc
                    if error.retriable() and attempt < owner._commit_attempts:
                        log.warning("commit of %s: %s, retrying", owner.transactional_id, error)
                        continue
                    owner.reinitialise()
                    raise PublishError(
                        f"transaction outcome unknown: {error.str()}",
                        transactional_id=owner.transactional_id,
                        code=error.name(),
                        outcome="unknown",
                    ) from exc
        finally:
            self._finish()

    def abort(self) -> None:
        """Abort (idempotent)."""
        if self._done:
            return
        try:
            self._abort_quietly()
        finally:
            self._finish()

    def _abort_quietly(self) -> None:
        owner = self._owner
        producer = owner.producer
        for attempt in range(1, owner._commit_attempts + 1):
            try:
                owner.bounded(
                    "abort_transaction", lambda: producer.abort_transaction(owner._timeout)
                )
                return
            except CallHung as hung:
                owner.abandon(hung)
                return
            except KafkaException as exc:
                error = kafka_error(exc)
                if error.code() in _FENCED:
                    # Aborted already (by the broker's timeout or the newer owner's epoch).
                    owner._fenced("abort_transaction", error)
                    return
                if error.retriable() and attempt < owner._commit_attempts:
                    continue
                # Unknown state: a fresh producer aborts it on the broker (now,
                # or at the next begin() if Kafka cannot be reached yet).
                log.warning("abort of %s failed (%s)", owner.transactional_id, error)
                with contextlib.suppress(PublishError):
                    owner.reinitialise()
                return

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._owner._end()
