"""The live worker: Kafka in, the engine per routing domain, Postgres audit, decisions out.

* ``processor``: records -> engine states -> rows and output records (no Kafka, no faust).
* ``checkpoint``: the commit protocol both runtimes share (apply -> publish -> persist under
  the owner's fence -> acks -> offsets), retries through outages, partition ownership.
* ``health``: prometheus_client metrics, /health (ok, degraded, failed) and /metrics.
* ``app``: the faust-streaming runtime; ``lean``: the plain aiokafka runtime.
* ``parts``: what both runtimes build alike; ``settings``: their settings.
"""
