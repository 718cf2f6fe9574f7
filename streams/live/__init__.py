"""The live worker: Kafka in, the engine per routing domain, Postgres audit, decisions out.

* ``processor``: decode -> engine -> one transaction -> outputs (no Kafka, no faust).
* ``app``: the faust-streaming app (one agent, concurrency 1, /health, /metrics).
* ``lean``: the same over a plain aiokafka consumer loop, pipelined (``--runtime aiokafka``).
* ``outputs``: what the decisions topic already holds (for re-sending after a crash).
"""
