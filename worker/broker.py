"""The worker's Redis transport: kombu's own, except where it can keep a worker from stopping.

At a channel's close (a stop, a lost connection) kombu puts the messages the worker holds
unacked back on their queue. Two things go wrong there when the broker is gone or frozen:

* After a lost connection, Celery's `Connection.collect()` half-closes the channels (the
  redis channel's close raises on the dead socket before the restore) and drops the
  transport's `client`. At the stop, the channel's close tries the restore again, builds a
  client from that `client` and raises `AttributeError: 'NoneType' object has no attribute
  'hostname'`. Celery's shutdown ignores only connection errors, so the exception leaves
  `WorkController.stop` before it sends `worker_shutdown`: the job processes are never told
  to stop, and at exit `multiprocessing` joins them forever (they wait on their pipe to us).
* On a frozen broker each restored message waits for its socket timeout, and redis-py
  retries: minutes for a handful of messages.

So the restore is tried only while a client can be made, and for RESTORE_WITHIN seconds at
most; what it leaves is safe. The messages stay in Redis's unacked set, which returns them
after the visibility timeout, and the jobs they named are in Postgres under their leases.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog
from kombu.transport import redis as kombu_redis

log = structlog.get_logger("worker")
RESTORE_WITHIN = 2.0


class QoS(kombu_redis.QoS):
    def restore_unacked(self, client: Any = None) -> None:
        delivered = self._delivered
        if not delivered:
            return
        held = len(delivered)
        transport = self.channel.connection
        if transport is None or transport.client is None:
            # The connection was collected after a loss: nothing to build a client from.
            log.warning("unacked_left_in_redis", messages=held, reason="connection closed")
            delivered.clear()
            return
        failure: list[str] = []

        def restore() -> None:
            try:
                super(QoS, self).restore_unacked(client)
            except Exception as exc:  # any broker failure: the messages stay in Redis
                failure.append(type(exc).__name__)

        # A daemon thread: one stuck on a frozen broker does not hold the process at exit.
        thread = threading.Thread(target=restore, name="unacked-restore", daemon=True)
        thread.start()
        thread.join(RESTORE_WITHIN)
        if thread.is_alive() or failure:
            reason = failure[0] if failure else f"no answer in {RESTORE_WITHIN:.0f} s"
            log.warning("unacked_left_in_redis", messages=held, reason=reason)
            delivered.clear()


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel
