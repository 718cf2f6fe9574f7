"""Alembic migrations of the audit schema (``streams.audit.models``), shipped as package data.

Run them with ``streams.audit.migrate.upgrade(url)`` or, from a checkout,
``alembic -c migrations/alembic.ini -x url=postgresql+psycopg://... upgrade head``.
"""
