"""Counter-based randomness: every draw is a keyed hash of (seed, stream, key).

``uniform(seed, "q-17")`` is the same number in any process, whatever else was drawn before, so
a decision depends only on (config, ordered events, seed).  BLAKE2b keyed by the seed is a
pseudo-random function; its first 53 bits give a float in [0, 1) with full double resolution.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np


def _digest(seed: int, key: str, stream: str) -> bytes:
    secret = str(seed).encode()
    if len(secret) > 64:  # BLAKE2b keys are at most 64 bytes: hash longer seeds, never cut them
        secret = hashlib.blake2b(secret).digest()
    return hashlib.blake2b(key.encode(), digest_size=8, key=secret,
                           person=stream.encode()[:16]).digest()


def uniform(seed: int, key: str, stream: str = "route") -> float:
    """A uniform float in [0, 1) for ``key`` on ``stream``."""
    return (int.from_bytes(_digest(seed, key, stream), "big") >> 11) * 2.0**-53


def generator(seed: int, key: str, stream: str,
              reuse: np.random.RandomState | None = None) -> np.random.RandomState:
    """A generator for ``key`` on ``stream`` (several draws for one decision).

    Mersenne Twister seeded by ``init_by_array`` with the 64-bit digest as 32-bit words: the
    same stream as ``random.Random(digest)`` of the standard library, without its module.
    ``reuse`` (a generator owned by the caller) is re-seeded instead of building a new one,
    which costs 8x less; its draws depend on the key only either way.
    """
    digest = int.from_bytes(_digest(seed, key, stream), "big")
    words = [digest & 0xFFFFFFFF, digest >> 32] if digest >> 32 else [digest & 0xFFFFFFFF]
    if reuse is None:
        return np.random.RandomState(words)
    reuse.seed(words)
    return reuse


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


_LOG4 = math.log(4.0)
_SG_MAGICCONST = 1.0 + math.log(4.5)


def beta_sample(rng: np.random.RandomState, a: float, b: float) -> float:
    """A Beta(a, b) draw for ``a, b >= 1`` as ``y / (y + z)``, ``y ~ Gamma(a)``, ``z ~ Gamma(b)``.

    Gamma by Cheng's rejection method (1977; exponential when the shape is 1), taking uniforms
    from ``rng`` in the same order as the standard library's ``betavariate``, so Thompson
    sampling draws the same numbers it did when it used that module: stored runs still replay.
    """
    y = _gamma_sample(rng, a)
    return y / (y + _gamma_sample(rng, b)) if y else 0.0


def _gamma_sample(rng: np.random.RandomState, shape: float) -> float:
    if shape <= 1.0:  # below 1 only by rounding here (shape = 1 + n * mean, mean in [0, 1])
        return -math.log(1.0 - rng.random_sample())
    ainv = math.sqrt(2.0 * shape - 1.0)
    bbb = shape - _LOG4
    ccc = shape + ainv
    while True:
        u1 = rng.random_sample()
        if not 1e-7 < u1 < 0.9999999:
            continue
        u2 = 1.0 - rng.random_sample()
        v = math.log(u1 / (1.0 - u1)) / ainv
        x = shape * math.exp(v)
        z = u1 * u1 * u2
        r = bbb + ccc * v - x
        if r + _SG_MAGICCONST - 4.5 * z >= 0.0 or r >= math.log(z):
            return x
