"""The Postgres audit trail: every run, event, decision and dead letter, replayable.

* ``store.AuditStore``: idempotent batched writes (one transaction per batch) and readers.
* ``models``: the tables (SQLAlchemy typed declarative); ``migrations/`` (Alembic) owns them.
* ``migrate``: ``upgrade(url)`` / ``downgrade(url, rev)`` from code.
* ``embedded``: which URL to use (flag, ``$STAGEROUTE_DB_URL``, or a zero-setup embedded
  PostgreSQL server).
* ``recorder``: the backtest's recorder (journal and decisions in batched transactions).

``python -m bench.audit`` prints write throughput.

A runtime adapter: the engine, policies and solvers never import it.
"""

from streams.audit.embedded import resolve_url, start_embedded, stop_embedded
from streams.audit.migrate import downgrade, upgrade
from streams.audit.store import AuditStore

__all__ = ["AuditStore", "downgrade", "resolve_url", "start_embedded", "stop_embedded", "upgrade"]
