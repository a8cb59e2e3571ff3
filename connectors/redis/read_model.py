"""Read models in Redis whose applied offsets are stored with the data.

``RedisReadModelStore`` implements ``CheckpointedReadModelStore``. A batch's
changes and its new offsets are written by one Lua script, which Redis runs
atomically: either all of it is visible or none of it, also across a crash
(the append-only file holds the script's effects as one unit). The script
first checks that the stored offsets are the ones the runner expects; if
another runner has written since, it writes nothing and answers False.

Layout, all under one hash tag so a cluster keeps a projection in one slot:
``kct:rm:{<projection>}:d:<key>`` documents (JSON strings),
``kct:rm:{<projection>}:c:<key>`` counters (hashes),
``kct:rm:{<projection>}:offsets`` next offset to apply per ``topic:partition``.

``reset`` wipes a projection while its runners may be writing: it first
marks the offsets hash as resetting (one atomic step that also drops the
offsets), then deletes the keys, then removes the mark. While the mark is
there every batch write and offsets read fails with ``StoreError`` (runners
wait it out), so no runner writes into a half-deleted model; afterwards
they find no offsets and rebuild from the start. A reset that died midway
leaves the mark: run it again.

Failure modes: any Redis error becomes ``StoreError`` naming the projection
(:func:`~connectors.redis.errors.map_exceptions`); the URL's credentials never
appear in it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import redis

from connectors.redis.errors import map_exceptions
from connectors.redis.settings import RedisSettings
from toolkit.errors import StoreError
from toolkit.ports import PendingApply, ReadModelChange
from toolkit.positions import TopicPartition

__all__ = [
    "APPLY_CHANGES_LUA",
    "RedisReadModelStore",
    "encode_changes",
    "encode_document",
    "read_documents",
]

# KEYS[1] is the offsets hash, KEYS[2..] the keys the changes name, in order.
# ARGV[1] is JSON: the expected and new offsets, and the changes as ops in
# order: {"p", first key, length...} a run of puts (one MSET), {"d", key} a
# delete, {"i", key, field, amount} an increment. ARGV[2] holds the put
# documents (JSON, ASCII) concatenated; an op's lengths cut them apart, so
# documents are neither escaped into ARGV[1] nor sent as one argument each.
# Applies request.ops (see encode_changes) to KEYS, cutting the put documents
# out of ARGV[2]; shared by every script that writes read-model changes.
APPLY_CHANGES_LUA = """
local blob = ARGV[2]
local pos = 1
for _, op in ipairs(request.ops) do
  local kind = op[1]
  if kind == 'p' then
    local args = {}
    local key = op[2]
    for n = 3, #op do
      local stop = pos + op[n]
      args[#args + 1] = KEYS[key]
      args[#args + 1] = string.sub(blob, pos, stop - 1)
      pos = stop
      key = key + 1
    end
    redis.call('MSET', unpack(args))
  elseif kind == 'd' then
    redis.call('DEL', KEYS[op[2]])
  elseif kind == 'i' then
    redis.call('HINCRBY', KEYS[op[2]], op[3], op[4])
  end
end
"""

# A field of the offsets hash, never a topic:partition: the model is being reset.
RESETTING_FIELD = "__resetting"

_APPLY = (
    """
if redis.call('HEXISTS', KEYS[1], '__resetting') == 1 then
  return {2}
end
local request = cjson.decode(ARGV[1])
for field, expected in pairs(request.expected) do
  local current = redis.call('HGET', KEYS[1], field)
  local stored = -1
  if current then stored = tonumber(current) end
  if stored ~= expected then
    return {0, field, current or ''}
  end
end
"""
    + APPLY_CHANGES_LUA
    + """
for field, offset in pairs(request.offsets) do
  redis.call('HSET', KEYS[1], field, offset)
end
return {1}
"""
)
# Drop the offsets and mark the model as being reset, in one step.
_MARK_RESETTING = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '__resetting', ARGV[1])
return 1
"""
# Puts per MSET: well below Lua's unpack() limit (LUAI_MAXCSTACK, 8000 values).
_MSET_CHUNK = 500
_MGET_CHUNK = 1000  # keys per MGET: bounded replies, one round trip per thousand


def _field(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


class RedisReadModelStore:
    """Projection read models in Redis, checkpointed with their applied offsets."""

    def __init__(self, settings: RedisSettings, client: redis.Redis | None = None) -> None:
        self._settings = settings
        self._redis = client or settings.client()
        self._apply_script = self._redis.register_script(_APPLY)
        self._mark_resetting = self._redis.register_script(_MARK_RESETTING)

    @staticmethod
    def _prefix(projection: str) -> str:
        return f"kct:rm:{{{projection}}}:"

    def _doc_key(self, projection: str, key: str) -> str:
        return f"{self._prefix(projection)}d:{key}"

    def _counter_key(self, projection: str, key: str) -> str:
        return f"{self._prefix(projection)}c:{key}"

    def _offsets_key(self, projection: str) -> str:
        return f"{self._prefix(projection)}offsets"

    def _errors(self, what: str, projection: str) -> AbstractContextManager[None]:
        return map_exceptions(what, self._settings, projection=projection)

    def get(self, projection: str, key: str) -> dict[str, Any] | None:
        with self._errors("read", projection):
            raw = self._redis.get(self._doc_key(projection, key))
        return None if raw is None else dict(json.loads(str(raw)))

    def get_many(self, projection: str, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        with self._errors("read", projection):
            return read_documents(self._redis, {k: self._doc_key(projection, k) for k in keys})

    def counters(self, projection: str, key: str) -> dict[str, int]:
        with self._errors("read", projection):
            raw = self._redis.hgetall(self._counter_key(projection, key))
        return {str(k): int(v) for k, v in dict(raw).items()}

    def applied_offsets(
        self, projection: str, partitions: Iterable[TopicPartition]
    ) -> dict[TopicPartition, int]:
        wanted = list(partitions)
        if not wanted:
            return {}
        fields = [_field(tp) for tp in wanted]
        with self._errors("read", projection):
            values = self._redis.hmget(self._offsets_key(projection), [*fields, RESETTING_FIELD])
        if values[-1] is not None:
            raise self._resetting(projection)
        return {tp: int(v) for tp, v in zip(wanted, values[:-1], strict=True) if v is not None}

    def _resetting(self, projection: str) -> StoreError:
        return StoreError(
            "read model is being reset; writes wait until the reset finishes "
            "(if no reset is running, one died midway: run it again)",
            projection=projection,
        )

    def apply(
        self,
        projection: str,
        changes: Sequence[ReadModelChange],
        expected: Mapping[TopicPartition, int | None],
        offsets: Mapping[TopicPartition, int],
    ) -> bool:
        keys, args = self._apply_request(projection, changes, expected, offsets)
        with self._errors("batch write", projection):
            result = self._apply_script(keys=keys, args=args)
        return self._applied(projection, result)

    def apply_later(
        self,
        projection: str,
        changes: Sequence[ReadModelChange],
        expected: Mapping[TopicPartition, int | None],
        offsets: Mapping[TopicPartition, int],
    ) -> PendingApply:
        keys, args = self._apply_request(projection, changes, expected, offsets)
        pool = self._redis.connection_pool
        with self._errors("batch write", projection):
            # A connection of its own until the answer is read: other calls meanwhile
            # (offset checks, reads) use the pool's other connections.
            connection: Any = pool.get_connection()
            try:
                connection.send_command("EVALSHA", self._apply_script.sha, len(keys), *keys, *args)
            except BaseException:
                connection.disconnect()
                pool.release(connection)
                raise
        return _PendingRedisApply(
            self, projection, connection, lambda: self.apply(projection, changes, expected, offsets)
        )

    def _apply_request(
        self,
        projection: str,
        changes: Sequence[ReadModelChange],
        expected: Mapping[TopicPartition, int | None],
        offsets: Mapping[TopicPartition, int],
    ) -> tuple[list[str], list[str]]:
        keys = [self._offsets_key(projection)]
        ops, documents = encode_changes(self._prefix(projection), changes, keys)
        request = {
            # cjson turns {} and [] alike into an empty table: pairs()/ipairs() accept both.
            "expected": {_field(tp): (-1 if o is None else o) for tp, o in expected.items()},
            "offsets": {_field(tp): o for tp, o in offsets.items()},
            "ops": ops,
        }
        return keys, [json.dumps(request, separators=(",", ":")), documents]

    def _applied(self, projection: str, result: Any) -> bool:
        if result and int(result[0]) == 2:
            raise self._resetting(projection)
        return bool(result and int(result[0]) == 1)

    def dump(self, projection: str) -> dict[str, Any]:
        """Every document and counter of the projection (for audits and tests)."""
        prefix = self._prefix(projection)
        out: dict[str, Any] = {}
        with self._errors("scan", projection):
            for raw_key in self._redis.scan_iter(match=f"{_escape(prefix)}*", count=1000):
                key = str(raw_key)
                kind, name = key[len(prefix) : len(prefix) + 2], key[len(prefix) + 2 :]
                if kind == "d:":
                    out[f"d:{name}"] = json.loads(str(self._redis.get(key)))
                elif kind == "c:":
                    counters = dict(self._redis.hgetall(key))
                    out[f"c:{name}"] = {str(f): int(v) for f, v in counters.items()}
        return out

    def reset(self, projection: str) -> None:
        """Delete the projection's documents, counters and offsets (see the module
        docstring: safe while its runners are writing)."""
        prefix = self._prefix(projection)
        offsets = self._offsets_key(projection)
        with self._errors("reset", projection):
            self._mark_resetting(keys=[offsets], args=["1"])
            found = (str(k) for k in self._redis.scan_iter(match=f"{_escape(prefix)}*", count=1000))
            batch = [key for key in found if key != offsets]
            for start in range(0, len(batch), 500):
                self._redis.unlink(*batch[start : start + 500])
            self._redis.hdel(offsets, RESETTING_FIELD)

    def close(self) -> None:
        self._redis.close()


class _PendingRedisApply:
    """An EVALSHA of the apply script sent on its own connection, its answer unread."""

    def __init__(
        self,
        store: RedisReadModelStore,
        projection: str,
        connection: Any,
        again: Callable[[], bool],
    ) -> None:
        self._store = store
        self._projection = projection
        self._connection: Any = connection
        self._again = again

    def result(self) -> bool:
        connection, self._connection = self._connection, None
        if connection is None:
            raise RuntimeError("the answer of this store step was already taken")
        pool = self._store._redis.connection_pool
        try:
            with self._store._errors("batch write", self._projection):
                try:
                    result = connection.read_response()
                except redis.exceptions.NoScriptError:
                    result = None  # not run (script cache flushed): apply loads it again
        except BaseException:
            connection.disconnect()  # the answer's state on the socket is unknown
            raise
        finally:
            pool.release(connection)
        if result is None:
            return self._again()
        return self._store._applied(self._projection, result)

    def abandon(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.disconnect()
            self._store._redis.connection_pool.release(connection)


def read_documents(client: redis.Redis, keys: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The JSON documents stored at the Redis keys ``keys`` maps names to, by name, in
    MGETs of at most ``_MGET_CHUNK`` keys; absent ones left out (raises redis errors)."""
    names = list(keys)
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(names), _MGET_CHUNK):
        chunk = names[start : start + _MGET_CHUNK]
        for name, raw in zip(chunk, client.mget([keys[n] for n in chunk]), strict=True):
            if raw is not None:
                found[name] = dict(json.loads(str(raw)))
    return found


def encode_document(document: Mapping[str, Any]) -> str:
    """A document as the read model stores it: ASCII JSON, sorted keys, no spaces."""
    try:
        return _DOCUMENT_ENCODER.encode(document)
    except BaseException:
        _DOCUMENT_ENCODER.reset()  # see _DocumentEncoder.reset
        raise


def encode_changes(
    prefix: str, changes: Sequence[ReadModelChange], keys: list[str]
) -> tuple[list[list[Any]], str]:
    """Changes as ``APPLY_CHANGES_LUA`` ops, appending the keys they name to ``keys``.

    Ops: ``["p", first key, length...]`` a run of puts (one MSET),
    ``["d", key]`` a delete, ``["i", key, field, amount]`` an increment; key
    numbers index ``keys`` from 1 (Lua). Returns the ops and the put documents
    (JSON, ASCII) concatenated, which the lengths cut apart again.
    """
    doc_prefix, counter_prefix = f"{prefix}d:", f"{prefix}c:"
    ops: list[list[Any]] = []
    documents: list[str] = []
    run: list[Any] | None = None  # the open run of puts
    encode = _DOCUMENT_ENCODER.encode
    try:
        for change in changes:
            kind = change.kind
            if kind == "put":
                if run is None or len(run) > _MSET_CHUNK:
                    run = ["p", len(keys) + 1]  # Lua arrays start at 1
                    ops.append(run)
                document = encode(change.document)
                documents.append(document)
                run.append(len(document))  # ASCII: characters == bytes
                keys.append(doc_prefix + change.key)
                continue
            run = None
            if kind == "delete":
                keys.append(doc_prefix + change.key)
                ops.append(["d", len(keys)])
            else:
                keys.append(counter_prefix + change.key)
                ops.append(["i", len(keys), change.field, change.amount])
    except BaseException:
        _DOCUMENT_ENCODER.reset()
        raise
    return ops, "".join(documents)


def _escape(pattern: str) -> str:
    """Escape glob characters of a key prefix for SCAN MATCH."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in pattern)


class _DocumentEncoder:
    """``json.dumps(document, separators=(",", ":"), sort_keys=True)``, cheaper per call.

    ``json.dumps`` with options builds a new encoder per call; this keeps
    CPython's C encoder (when present) and calls it directly. Same output
    (ASCII JSON, sorted keys, no spaces), same errors.
    """

    def __init__(self) -> None:
        self._python = json.JSONEncoder(separators=(",", ":"), sort_keys=True)
        self._c: Any = None
        self.reset()

    def reset(self) -> None:
        """A fresh C encoder (its circular-reference markers may be stale after an error)."""
        if json.encoder.c_make_encoder is None:  # type: ignore[attr-defined]
            return
        py = self._python
        self._c = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
            {},  # markers: check_circular
            py.default,
            json.encoder.encode_basestring_ascii,
            None,  # indent
            py.key_separator,
            py.item_separator,
            py.sort_keys,
            py.skipkeys,
            py.allow_nan,
        )

    def encode(self, document: Any) -> str:
        if self._c is None:
            return self._python.encode(document)
        if isinstance(document, str):  # what JSONEncoder.encode does for a bare string
            return self._python.encode(document)
        return "".join(self._c(document, 0))


_DOCUMENT_ENCODER = _DocumentEncoder()
