"""The e2e tests that need a real PostgreSQL or Kafka use the integration fixtures."""

from tests.integration.conftest import kafka_bootstrap, migrated_db, pg_url

__all__ = ["kafka_bootstrap", "migrated_db", "pg_url"]
