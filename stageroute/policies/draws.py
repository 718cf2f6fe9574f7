"""Counter-based randomness: every draw is a keyed hash of (seed, stream, key).

``uniform(seed, "q-17")`` is the same number in any process, whatever else was drawn before, so
a decision depends only on (config, ordered events, seed).  BLAKE2b keyed by the seed is a
pseudo-random function; its first 53 bits give a float in [0, 1) with full double resolution.
"""

from __future__ import annotations

import hashlib
import random


def _digest(seed: int, key: str, stream: str) -> bytes:
    secret = str(seed).encode()
    if len(secret) > 64:  # BLAKE2b keys are at most 64 bytes: hash longer seeds, never cut them
        secret = hashlib.blake2b(secret).digest()
    return hashlib.blake2b(key.encode(), digest_size=8, key=secret,
                           person=stream.encode()[:16]).digest()


def uniform(seed: int, key: str, stream: str = "route") -> float:
    """A uniform float in [0, 1) for ``key`` on ``stream``."""
    return (int.from_bytes(_digest(seed, key, stream), "big") >> 11) * 2.0**-53


def generator(seed: int, key: str, stream: str) -> random.Random:
    """A private generator for ``key`` on ``stream`` (several draws for one decision)."""
    return random.Random(int.from_bytes(_digest(seed, key, stream), "big"))


def sample_index(p: list[float], draw: float) -> int:
    """Inverse-CDF sample of ``p`` at ``draw`` in [0, 1): the first ``i`` with
    ``p_0 + ... + p_i > draw * sum(p)``.  Scaling by the sum keeps float rounding of ``p`` from
    running past the last model; a model with ``p_i = 0`` is never chosen."""
    target = draw * sum(p)
    acc = 0.0
    last = 0
    for i, pi in enumerate(p):
        if pi > 0.0:
            acc += pi
            last = i
            if acc > target:
                return i
    return last
