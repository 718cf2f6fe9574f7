"""The existing policies' decisions, bit for bit: digests of every output on fixed runs.

CI also runs this file on the compiled build (``setup.py``): the same digests.

The digests were computed before the contextual policy was added (the commit that added the
budget ledger); main's later engine changes (atomic apply, the DeployOPT tolerance fix) left
them as they were, which was checked on main itself when it was merged.  Adding a policy must
not move a single bit of the others' decisions; if a change to a policy is intended, it says
so and updates its digest here.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache

import pytest

from schemas import encode
from stageroute.backtest.driver import Stream, drive, iid_rows, table_workload
from stageroute.backtest.runner import oracle_means
from stageroute.backtest.scenario import parse_schedule
from stageroute.backtest.table import RewardTable
from stageroute.engine import EngineConfig, initial_state
from streams.data import BUNDLED_TABLE, DEFAULT_SCHEDULE
from streams.tables import load_table
from tests.factories import log_digest

#: (policy, beta, prices known, feedback delay, seed) -> SHA-256 of the run's encoded outputs.
GOLDEN: dict[tuple[str, float, bool, int, int], str] = {
    ('stageroute', 0.3, True, 0, 0):
        'fb9184225930f2fb7f516313150592484607aa4789a8ec15aaeaa81f3b12c81d',
    ('stageroute', 0.7, True, 0, 1):
        '47438800ea0e415d79d5225d3eff39d876e3ce64d82ec355d91a991cb0210a7f',
    ('stageroute', 0.03, True, 3, 2):
        'd32363a576e3da32bea200607a84bc9797d37c053497ea8f56b2643d1deffe8f',
    ('stageroute', 0.3, False, 0, 3):
        '8dea4c24603f2bf11f5d0255563be8151b68fca1d1a4f5b59b207ed40c5e00f4',
    ('stageroute_paper', 0.3, False, 0, 0):
        '8c93673c5fd5c629193ba30018f73f2d0d0c4f63b69c735bfc25384ba5488ee2',
    ('greedy', 0.3, True, 0, 0):
        '19bd9183dfd8a3bd97100299be2f0d4d6f53e81557829518be4fc80b3d24652a',
    ('thompson', 0.7, True, 2, 0):
        '7007d8a7588ed6ea3139ff764c5f57fcf358041077fbcae1cd06a51941258c17',
    ('epsilon_greedy', 0.3, True, 0, 4):
        'ebff8632c1a3c0e69323196dbb40704b0fa4a8cbaef9178007d419e99a563c3a',
    ('oracle', 0.3, True, 0, 0):
        '78aeda3612375ba4754c6a985c8d89e732f018514cae8e80d7880482ff57b8c8',
    # Recorded after the contextual throughput work: the compiled build must match them.
    ('contextual', 0.3, True, 0, 0):
        'e6e70564f590821582bd58767ac4fa5e3756555d7a4e78e6846e99d9b10bac57',
    ('contextual', 0.7, False, 2, 1):
        '4707e9ca4baee6c4c052683aba12587d8f18edfce9d2662159f1cea8e9899678',
    ('contextual_greedy', 0.3, True, 0, 2):
        'aa0033c6dc3f03d00a78ab00589b968348a94abf574674f61949ec7013cc6a03',
}

#: SHA-256 of the scripted log's outputs (tests.factories.log_digest) per policy.
GOLDEN_SCRIPTED: dict[str, str] = {
    'stageroute':
        '638f53d7ef6327cd1840996822699b2424bc4f41c3bfd4f574617dfda646a345',
    'stageroute_paper':
        'b7a2598d6bdfa83ef87b46fb9bd1a7ee2247959fd14998fb20eec0db2f4c6b6c',
    'greedy':
        'c398677ec43b989dd24fb77ffc0abd58e3b4f6c8c7c76fd7f004a9209c8317f8',
    'epsilon_greedy':
        '9c1b7f7f9393136ff27bbf93ecd0dcba94dadc5416c9c12dc40ec44558d6b84a',
    'thompson':
        '682bbbd24bc9d1169a84aab0d088bb7e0f86b94ac502b0fa61ee34c19b91d226',
    'random':
        '2da025cbf109533e1c941e658a642d45a0d8ba53802088658a199c66e568637e',
    'static':
        '0edbd51037aa4b497089decada2895b2d02c16659bd52cf314ad959b72932a99',
    'ucb_bwk':
        '9ab8783263fd3282702233d1ca3e3ac106ead189ebba0a79ab9fa2b372faee7b',
    'oracle':
        '9a73a78e661812727cb156c0f5df713f726c28031c7b6a04c0218dbfbfdb946a',
}

CASES = [
    ("stageroute", 0.3, True, 0, 0),
    ("stageroute", 0.7, True, 0, 1),
    ("stageroute", 0.03, True, 3, 2),
    ("stageroute", 0.3, False, 0, 3),
    ("stageroute_paper", 0.3, False, 0, 0),
    ("greedy", 0.3, True, 0, 0),
    ("thompson", 0.7, True, 2, 0),
    ("epsilon_greedy", 0.3, True, 0, 4),
    ("oracle", 0.3, True, 0, 0),
    ("contextual", 0.3, True, 0, 0),
    ("contextual", 0.7, False, 2, 1),
    ("contextual_greedy", 0.3, True, 0, 2),
]
POLICIES = ["stageroute", "stageroute_paper", "greedy", "epsilon_greedy", "thompson", "random",
            "static", "ucb_bwk", "oracle"]


@cache
def _table() -> RewardTable:
    return load_table(BUNDLED_TABLE)


def run_digest(policy: str, beta: float, prices: bool, delay: int, seed: int,
               horizon: int = 2000) -> str:
    """SHA-256 of every output of one backtest run of the bundled table (default schedule)."""
    table = _table()
    scenario = parse_schedule(json.loads(DEFAULT_SCHEDULE.read_text()), table.models, horizon,
                              "bundled schedule")
    means = table.mean_cost()
    list_prices = {m: float(c) for m, c in zip(table.models, means)} if prices else None
    stream = Stream(iid_rows(table.n_rows, horizon, seed), scenario, 0.5, list_prices, delay)
    params = {"means": oracle_means(table)} if policy == "oracle" else {}
    config = EngineConfig(policy=policy, policy_params=params, m_max=4,
                          budget=beta * float(means.max()), cost_ceiling=float(table.costs.max()),
                          seed=seed)
    digest = hashlib.sha256()

    def record(seq: int, event: object, outputs: list[object]) -> None:
        for out in outputs:
            digest.update(encode(out))  # type: ignore[arg-type]
            digest.update(b"\n")

    for _ in drive(initial_state(config), table_workload(table, stream), record):
        pass
    return digest.hexdigest()


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_backtest_decisions_are_unchanged(case: tuple[str, float, bool, int, int]) -> None:
    assert run_digest(*case) == GOLDEN[case]


@pytest.mark.parametrize("policy", POLICIES)
def test_scripted_log_decisions_are_unchanged(policy: str) -> None:
    assert log_digest(policy) == GOLDEN_SCRIPTED[policy]
