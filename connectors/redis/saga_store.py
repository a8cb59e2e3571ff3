"""Exactly-once local effects of saga participants, in Redis.

``RedisSagaStepStore`` implements ``SagaStepStore``. ``record_once`` runs one
Lua script: if the step's dedup key is already recorded it changes nothing
and returns the stored outcome; otherwise it applies the action's read-model
changes and records the outcome (which holds the reply and next command the
participant publishes). Redis runs the script atomically, and the append-only
file keeps its effects as one unit, so after any crash either both the effect
and its record exist or neither does. A participant that receives a command
again finds the record and re-publishes what it stored instead of acting
twice; a watchdog that records a timeout first makes a late command a no-op.

``outcomes`` reads many outcomes with one ``MGET``. ``record_each`` sends
one script per record in one pipeline (one round trip, not a transaction):
each record is still its own atomic script with the same once-only check,
and additionally refuses (``stale``, nothing changed) when a document the
decision read (``StepRecord.expected``) no longer holds the value it saw,
compared as the read model's JSON encoding. So a decision that read another
record's pending change, or a document another member of the group wrote
meanwhile, is never applied on top of a state it did not see.

Layout: the participant's read model uses the projection layout
(``kct:rm:{<participant>}:d:<key>`` documents, ``:c:<key>`` counters), and
outcomes live at ``kct:rm:{<participant>}:once:<key>``, all in one hash slot.

Durability (``RedisSettings.durability_fsync``, ``wait_replicas``, from
kct.yaml's ``redis.durability``): with ``fsync`` ``always`` or ``everysec``
the first step record checks the server's ``appendonly``/``appendfsync``
(``CONFIG GET``) and refuses to run on a weaker one (``ConfigurationError``);
with ``wait_replicas`` n, every step record (new or found) waits with
``WAIT n`` until n replicas hold it, and raises ``StoreError`` if fewer did
within ``wait_timeout``: the participant then retries the command, which
finds its record and re-publishes, so a failover to a replica never loses a
step that was acknowledged to Kafka.

Failure modes: any Redis error becomes ``StoreError`` naming the participant.
Outcomes are kept until deleted: they cannot be rebuilt from Kafka (see the
README's production checklist for Redis durability).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import redis

from connectors.redis.errors import map_exceptions
from connectors.redis.read_model import (
    APPLY_CHANGES_LUA,
    RedisReadModelStore,
    encode_changes,
    encode_document,
    read_documents,
)
from connectors.redis.settings import RedisSettings
from toolkit.errors import ConfigurationError, StoreError
from toolkit.ports import ReadModelChange, StepRecord, StepRecordResult

__all__ = ["RedisSagaStepStore"]

_RECORD_ONCE = (
    """
local existing = redis.call('GET', KEYS[1])
if existing then
  return {0, existing}
end
local request = cjson.decode(ARGV[1])
"""
    + APPLY_CHANGES_LUA
    + """
redis.call('SET', KEYS[1], ARGV[3])
return {1}
"""
)


# record_each: the same, after checking the documents the decision read.
# ARGV[4] holds the expected documents (JSON, ASCII) concatenated;
# request.expect lists {key number, length} (length -1: expected absent).
_RECORD_CHECKED = (
    """
local existing = redis.call('GET', KEYS[1])
if existing then
  return {0, existing}
end
local request = cjson.decode(ARGV[1])
local expected = ARGV[4]
local at = 1
for _, check in ipairs(request.expect) do
  local current = redis.call('GET', KEYS[check[1]])
  if check[2] < 0 then
    if current then
      return {2}
    end
  else
    local stop = at + check[2]
    if current ~= string.sub(expected, at, stop - 1) then
      return {2}
    end
    at = stop
  end
end
"""
    + APPLY_CHANGES_LUA
    + """
redis.call('SET', KEYS[1], ARGV[3])
return {1}
"""
)


class RedisSagaStepStore:
    """A participant's read model plus its once-only step outcomes."""

    def __init__(self, settings: RedisSettings, client: redis.Redis | None = None) -> None:
        self._settings = settings
        self._redis = client or settings.client()
        self._read_model = RedisReadModelStore(settings, self._redis)
        self._record_once = self._redis.register_script(_RECORD_ONCE)
        self._record_checked = self._redis.register_script(_RECORD_CHECKED)
        self._durability_checked = settings.durability_fsync == "any"

    @staticmethod
    def _prefix(participant: str) -> str:
        return f"kct:rm:{{{participant}}}:"

    def _errors(self, what: str, participant: str) -> AbstractContextManager[None]:
        return map_exceptions(what, self._settings, participant=participant)

    def get(self, projection: str, key: str) -> dict[str, Any] | None:
        return self._read_model.get(projection, key)

    def counters(self, projection: str, key: str) -> dict[str, int]:
        return self._read_model.counters(projection, key)

    def outcome(self, participant: str, key: str) -> dict[str, Any] | None:
        with self._errors("read", participant):
            raw = self._redis.get(f"{self._prefix(participant)}once:{key}")
        return None if raw is None else dict(json.loads(str(raw)))

    def outcomes(self, participant: str, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        prefix = f"{self._prefix(participant)}once:"
        with self._errors("read", participant):
            return read_documents(self._redis, {key: prefix + key for key in keys})

    def record_once(
        self,
        participant: str,
        key: str,
        changes: Sequence[ReadModelChange],
        outcome: Mapping[str, Any],
    ) -> tuple[bool, dict[str, Any]]:
        keys = [f"{self._prefix(participant)}once:{key}"]
        ops, documents = encode_changes(self._prefix(participant), changes, keys)
        request = json.dumps({"ops": ops}, separators=(",", ":"))
        stored = json.dumps(outcome, separators=(",", ":"), sort_keys=True)
        if not self._durability_checked:
            self._check_fsync(participant)
        with self._errors("step record", participant):
            result = self._record_once(keys=keys, args=[request, documents, stored])
        if self._settings.wait_replicas:
            self._wait_for_replicas(participant)
        if int(result[0]) == 1:
            return True, dict(outcome)
        return False, dict(json.loads(str(result[1])))

    def record_each(
        self, participant: str, records: Sequence[StepRecord]
    ) -> list[StepRecordResult]:
        """One ``EVALSHA`` per record, pipelined (not a transaction: each script is
        atomic on its own, and a failed one does not undo the others)."""
        if not records:
            return []
        if not self._durability_checked:
            self._check_fsync(participant)
        calls = [self._checked_call(participant, record) for record in records]
        with self._errors("step records", participant):
            results = self._run_pipelined(calls)
        if self._settings.wait_replicas:
            self._wait_for_replicas(participant)
        out: list[StepRecordResult] = []
        for record, result in zip(records, results, strict=True):
            status = int(result[0])
            if status == 1:
                out.append(StepRecordResult("recorded", dict(record.outcome)))
            elif status == 0:
                out.append(StepRecordResult("decided", dict(json.loads(str(result[1])))))
            else:
                out.append(StepRecordResult("stale", {}))
        return out

    def _checked_call(self, participant: str, record: StepRecord) -> list[Any]:
        """KEYS and ARGV of one ``_RECORD_CHECKED`` call."""
        prefix = self._prefix(participant)
        keys = [f"{prefix}once:{record.key}"]
        expect: list[list[int]] = []
        documents: list[str] = []
        for key, document in record.expected.items():
            keys.append(f"{prefix}d:{key}")
            if document is None:
                expect.append([len(keys), -1])
            else:
                encoded = encode_document(document)
                documents.append(encoded)
                expect.append([len(keys), len(encoded)])  # ASCII: characters == bytes
        ops, puts = encode_changes(prefix, record.changes, keys)
        request = json.dumps({"ops": ops, "expect": expect}, separators=(",", ":"))
        stored = json.dumps(record.outcome, separators=(",", ":"), sort_keys=True)
        return [len(keys), *keys, request, puts, stored, "".join(documents)]

    def _run_pipelined(self, calls: Sequence[list[Any]]) -> list[Any]:
        """Every call as ``EVALSHA`` in one pipeline; if the server lacks the
        script (a restart, ``SCRIPT FLUSH``), load it and send them all again:
        a call that did run meanwhile answers ``decided`` with its own record."""
        sha = self._record_checked.sha
        for attempt in (1, 2):
            pipe = self._redis.pipeline(transaction=False)
            for call in calls:
                pipe.execute_command("EVALSHA", sha, *call)  # type: ignore[no-untyped-call]
            results = pipe.execute(raise_on_error=False)
            missing = any(isinstance(r, redis.exceptions.NoScriptError) for r in results)
            if not missing or attempt == 2:
                break
            self._redis.script_load(_RECORD_CHECKED)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return list(results)

    def _check_fsync(self, participant: str) -> None:
        """Refuse a Redis whose append-only file is weaker than ``durability_fsync``."""
        wanted = self._settings.durability_fsync
        try:
            with self._errors("durability check (CONFIG GET)", participant):
                appendonly = self._redis.config_get("appendonly").get("appendonly")
                appendfsync = self._redis.config_get("appendfsync").get("appendfsync")
        except StoreError as exc:
            raise ConfigurationError(
                f"redis.durability.fsync is {wanted!r} but the server's settings cannot be "
                f"read ({exc.message}); check them yourself and set fsync: any",
                url=self._settings.safe_url(),
            ) from exc
        strong_enough = appendfsync == "always" or (wanted == "everysec" and appendfsync != "no")
        if appendonly != "yes" or not strong_enough:
            raise ConfigurationError(
                f"redis.durability.fsync is {wanted!r} but Redis runs appendonly {appendonly}, "
                f"appendfsync {appendfsync}: saga step records could be lost in a crash; "
                f"set appendonly yes and appendfsync {wanted} on the server",
                url=self._settings.safe_url(),
            )
        self._durability_checked = True

    def _wait_for_replicas(self, participant: str) -> None:
        wanted = self._settings.wait_replicas
        with self._errors("WAIT for replicas", participant):
            acked = int(self._redis.wait(wanted, int(self._settings.wait_timeout * 1000)))
        if acked < wanted:
            raise StoreError(
                f"step record held by {acked} of {wanted} replicas after "
                f"{self._settings.wait_timeout:g} s (redis.durability.wait_replicas); "
                "the command will be retried",
                participant=participant,
                replicas=acked,
            )

    def close(self) -> None:
        self._redis.close()
