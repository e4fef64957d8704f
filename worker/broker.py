"""The broker transport: kombu's Redis transport, except that no value on a queue can stop
the worker. tasks/app.py registers it for redis:// and rediss:// (`register`).

Why here. kombu's Redis channel pops a value (BRPOP, or RPOP in `_get`) and decodes it
inline, `loads(bytes_to_str(item))`, before any callback: a value that is not JSON raises
out of the worker's event loop ("Unrecoverable error", the worker exits). The envelope is
then taken apart in `Message.__init__` (a body that is not base64 raises binascii.Error, same
end; a missing field raises KeyError, which this transport counts as a connection error, so
the popped value is dropped with "connection to broker lost"). Celery's own decode-error
handling only runs after all that. kombu offers no hook in between, so this channel
overrides the two methods that pop and decode (`_brpop_read`, `_get`; copies of kombu
5.7.0's, one line changed) and reads each value with worker.messages.read_message first.

What it does with a value it cannot read: pushes an `embeddings.dead_letter` message in its
place (worker.client.dead_letter_message: the raw value, capped, the reason, where it came
from) onto the dead-letter queue, where a worker records it in PostgreSQL
(tasks/embeddings.py); then goes on consuming. As a last line, anything else a delivery
raises (other than a real connection error) is dead-lettered the same way (`undeliverable`).
Fanout (pub/sub) messages are Celery's control and event traffic, not tasks: a bad one is
logged and dropped.

tests/unit/test_broker.py fails when kombu's copied methods change (a kombu upgrade): port
the copies, then update the fingerprints below.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Callable
from queue import Empty
from typing import Any

from kombu import transport as kombu_transport
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from worker import client, messages

logger = logging.getLogger(__name__)

# Transport options (Celery's broker_transport_options) this channel reads.
OPTION_TASK_QUEUES = "embedder_task_queues"  # queues that carry Celery task messages
OPTION_DEAD_LETTER_QUEUE = "embedder_dead_letter_queue"  # where dead letters are pushed
# Which task names the process runs: set by register(). Not a transport option: those are
# reported in the worker's `inspect stats` reply (Flower's Workers page), which must be JSON.
_known_task: Callable[[str], bool] | None = None

# sha256 of the kombu methods the Channel below copies (inspect.getsource), as written for
# kombu 5.7.0. A different fingerprint means kombu changed them: re-read and port.
KOMBU_FINGERPRINTS = {
    "kombu.transport.redis.Channel._brpop_read": (
        "c42518699709f2df90f55a048fe6346612ae5527e5c4a6819f2c0920dc62088f"
    ),
    "kombu.transport.redis.Channel._get": (
        "be26a9f1eb4cf8da2aa65f4815a1709bf80b4434b064d3d7146872d318ad506c"
    ),
    "kombu.transport.virtual.base.AbstractChannel._get_and_deliver": (
        "542e98b3232be64dc20ea1bfaff5265faf8497a4b56d1b4c3eb3e19a531c7b14"
    ),
}


def kombu_fingerprints() -> dict[str, str]:
    """The current fingerprints of the kombu methods this module copies."""
    methods: dict[str, Any] = {
        "kombu.transport.redis.Channel._brpop_read": kombu_redis.Channel._brpop_read,
        "kombu.transport.redis.Channel._get": kombu_redis.Channel._get,
        "kombu.transport.virtual.base.AbstractChannel._get_and_deliver": (
            virtual.base.AbstractChannel._get_and_deliver
        ),
    }
    return {
        name: hashlib.sha256(inspect.getsource(method).encode()).hexdigest()
        for name, method in methods.items()
    }


def transport_options(*, task_queues: tuple[str, ...], dead_letter_queue: str) -> dict[str, Any]:
    """The broker_transport_options entries that configure this transport (JSON values only:
    a worker reports its transport options in `inspect stats`)."""
    return {OPTION_TASK_QUEUES: list(task_queues), OPTION_DEAD_LETTER_QUEUE: dead_letter_queue}


def register(known_task: Callable[[str], bool] | None = None) -> None:
    """Make redis:// and rediss:// URLs use this transport in this process; `known_task`
    tells whether a task name is one this process runs (None: any name is).

    Through kombu's transport aliases rather than Celery's `broker_transport`: with the
    latter a connection's URI names the class instead of the scheme ("worker.broker:
    Transport://…"), which Flower cannot map to its Redis broker page.
    """
    global _known_task
    _known_task = known_task
    for scheme in ("redis", "rediss"):
        kombu_transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"


class Channel(kombu_redis.Channel):
    """kombu's Redis channel; every popped value is read by worker.messages first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        connection = args[0] if args else kwargs["connection"]
        options = connection.client.transport_options or {}
        self.embedder_task_queues = frozenset(options.get(OPTION_TASK_QUEUES, ()))
        self.embedder_dead_letter_queue: str | None = options.get(OPTION_DEAD_LETTER_QUEUE)
        self.embedder_known_task: Callable[[str], bool] | None = _known_task
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]

    # -- copied from kombu 5.7.0 (kombu/transport/redis.py); the change is marked ----------

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                # if there's a ConnectionError, disconnect so the next
                # iteration will reconnect automatically.
                self.client.connection.disconnect()
                raise
            if dest__item:
                dest, item = dest__item
                dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]  # type: ignore[no-untyped-call]
                self._queue_cycle.rotate(dest)
                # Embedder: read the value before kombu does (was: deliver(loads(...), dest)).
                self._deliver_item(item, dest, self.connection._deliver)
                return True
            else:
                raise Empty()
        finally:
            self._in_poll = None  # type: ignore[assignment]
            # The BRPOP connection is now idle (its reply has been fully
            # consumed and no new BRPOP has been issued yet): this is the
            # safe moment to flush any pending streaming re-auth token.
            self._flush_brpop_reauth()  # type: ignore[no-untyped-call]

    def _get(self, queue: str, timeout: Any = None) -> Any:  # noqa: ARG002 (kombu's signature)
        with self.conn_or_acquire() as client_:
            for pri in self.priority_steps:
                item = client_.rpop(self._q_for_pri(queue, pri))  # type: ignore[no-untyped-call]
                if item:
                    self._maybe_update_queues_expire(client_, queue)  # type: ignore[no-untyped-call]
                    # Embedder: read the value before kombu does (was: return loads(...)).
                    payload = self._read_item(item, queue)
                    if payload is None:
                        raise Empty()  # dead-lettered: nothing to deliver
                    return payload

            self._maybe_update_queues_expire(client_, queue)  # type: ignore[no-untyped-call]
            raise Empty()

    # -- copied from kombu 5.7.0 (kombu/transport/virtual/base.py) --------------------------

    def _get_and_deliver(self, queue: str, callback: Callable[[Any, str], Any]) -> None:
        message = self._get(queue)
        # Embedder: a delivery that raises is dead-lettered (was: callback(message, queue)).
        self._guarded_deliver(message, queue, callback, raw=None)

    # -- Embedder's own --------------------------------------------------------------------

    def _deliver_item(self, item: bytes, queue: str, deliver: Callable[[Any, str], Any]) -> None:
        payload = self._read_item(item, queue)
        if payload is not None:
            self._guarded_deliver(payload, queue, deliver, raw=item)

    def _read_item(self, item: bytes, queue: str) -> Any | None:
        """kombu's payload for `item`, or None once it has been dead-lettered."""
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8", "surrogatepass")
        try:
            messages.read_message(
                raw,
                is_task_queue=queue in self.embedder_task_queues,
                known_task=self.embedder_known_task,
            )
        except messages.Refused as refused:
            self._dead_letter(raw, queue, refused)
            return None
        return loads(bytes_to_str(raw))  # type: ignore[no-untyped-call]

    def _guarded_deliver(
        self,
        payload: Any,
        queue: str,
        deliver: Callable[[Any, str], Any],
        raw: bytes | None,
    ) -> None:
        """Deliver; if that raises anything but a connection error, dead-letter the value."""
        try:
            deliver(payload, queue)
        except Exception as exc:
            # kombu counts KeyError as a connection error (a stale poller entry); from a
            # delivery it can only come from the message.
            if isinstance(exc, self.connection_errors) and not isinstance(exc, KeyError):
                raise
            tag = payload.get("properties", {}).get("delivery_tag")
            if tag is not None:
                self.qos.ack(tag)  # recorded as a dead letter: never redeliver it
            data = raw if raw is not None else json.dumps(payload).encode("utf-8")
            refused = messages.Refused(
                "undeliverable",
                f"the worker could not take the message: {type(exc).__name__}: {exc}",
                task_name=(payload.get("headers") or {}).get("task"),
                task_id=(payload.get("headers") or {}).get("id"),
            )
            logger.exception("%s", refused.detail)
            self._dead_letter(data, queue, refused)

    def _dead_letter(self, raw: bytes, queue: str, refused: messages.Refused) -> None:
        """Push the dead-letter message in place of `raw` (or log it when there is nowhere)."""
        target = self.embedder_dead_letter_queue
        logger.error(
            "unreadable message on queue %s (%s: %s), %s bytes: %s",
            queue,
            refused.reason,
            refused.detail,
            len(raw),
            "dead-lettered" if target else "dropped (no dead-letter queue configured)",
        )
        if target is None:
            return
        try:
            self._put(target, client.dead_letter_message(raw, refused, queue))  # type: ignore[no-untyped-call]
        except self.connection_errors:
            logger.critical(
                "could not dead-letter a message from %s (%s), lost: %r",
                queue,
                refused.reason,
                raw[:2000],
            )
            raise

    def _deliver_fanout_message(self, message: Any, exchange: str) -> Any:
        """Control and event messages: one that cannot be delivered is logged and dropped."""
        try:
            return super()._deliver_fanout_message(message, exchange)  # type: ignore[no-untyped-call]
        except Exception as exc:
            if isinstance(exc, self.connection_errors) and not isinstance(exc, KeyError):
                raise
            logger.warning(
                "dropped an undeliverable broadcast message on %s: %s: %s; %.300r",
                exchange,
                type(exc).__name__,
                exc,
                message,
            )
            return False


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the Channel above (redis://, rediss://, unix://)."""

    Channel = Channel
