"""The budget ledger: realised spend held within the budget from the first query on.

StageRoute's optimism is right for reward and wrong for money: routing on cost *lower* bounds
lets realised spend run over the budget by O(T^(2/3)), and a single query to a frontier model
can cost hundreds of per-query budgets.  The ledger keeps optimism on the reward side only;
feasibility rests on cost *estimates* (``ĉ_m``: the posterior mean of the model's cost with its
published price as the prior, see ``ModelStats.refresh_bounds``) and on the spend committed so
far.

State, after ``n`` routed queries (USD)::

    C_n = sum of realised costs of answered queries + sum of ĉ of the others    (committed)

Two rules decide what RouteOPT may do for query ``n + 1``, budget ``b`` per query:

1. **Affordability.**  The headroom is ``H_n = (1 + eps) b (n + 1) - C_n``.  A deployed model
   may be drawn only if ``ĉ_m <= H_n``; the others get cap 0 in RouteOPT.  Whatever is drawn,
   ``C_{n+1} = C_n + ĉ_drawn <= (1 + eps) b (n + 1)``: by induction committed spend never
   exceeds the budget line by more than ``eps``, from the first query on, at any price spread.
   A model dearer than one query's budget is therefore routed only out of saved slack
   (``b n - C_n``), never on credit.
2. **Pacing.**  RouteOPT's budget is ``b_t = (1 - rho) b + (b n - C_n) / W``, clipped to
   ``[cheapest affordable mix, H_n]``: an integral controller on committed spend, with no clip
   that stops it acting (the accumulator is ``C_n`` itself).  With ``s_n = b n - C_n`` and the
   budget binding (``E[ĉ_drawn] = b_t``), ``E[s_{n+1}] = (1 - 1/W) s_n + rho b``, so slack
   settles at ``rho W b``: a reserve that lets a model dearer than a query's budget be
   explored and used, while long-run spend converges to ``b``.  ``rho`` is the exploration
   allowance: the share of the budget set aside into that reserve.

Where the rules cannot hold, the outcome is defined and recorded:

* the budget is below every deployed mix (``b`` < the cheapest mix within the shares): the
  cheapest mix, status ``budget_infeasible`` (counted);
* the affordable models cannot carry all traffic within their shares (caps summing below 1),
  e.g. while repaying an overrun: the cheapest mix within the shares, since shares are a
  physical limit and money is repaid by the next queries;
* a model without a published price and without observations has no cost estimate: its first
  query (the probe) is the one unavoidable risk, bounded by the arrival's ``cost_max``.  Rule 1
  charges the probe nothing and, while it awaits feedback, charges ``cost_max`` for another,
  so unless the headroom covers the worst case at most one probe per model is in flight.

Realised costs enter ``C`` when feedback arrives, replacing the estimate made at decision
time; a query whose feedback never comes keeps its estimate (assumed spent).  So the bound
holds on realised spend up to the estimation error of queries still awaiting feedback.
"""

from __future__ import annotations

from dataclasses import dataclass

from solvers.route_opt import budget_limit, cheapest_mix_cost


@dataclass(slots=True)
class Ledger:
    """Committed spend of one domain: ``routed`` queries, ``committed`` USD (see above)."""

    routed: int = 0
    committed: float = 0.0

    def commit(self, estimate: float) -> None:
        """A query was routed to a model whose cost estimate is ``estimate``."""
        self.routed += 1
        self.committed += estimate

    def settle(self, estimate: float, cost: float) -> None:
        """Feedback: the realised ``cost`` replaces the ``estimate`` committed for it."""
        self.committed += cost - estimate


@dataclass(frozen=True, slots=True)
class Plan:
    """What RouteOPT gets for one query: caps (0 where unaffordable) and budget."""

    caps: list[float]
    budget: float
    infeasible: bool
    """The nominal budget is below the cheapest mix within the shares."""


def plan(ledger: Ledger, budget: float, cost: list[float], risk: list[float],
         alpha: list[float], overdraft: float, reserve: float, window: int) -> Plan:
    """Rules 1 and 2 of the module docstring for the next query.

    Per deployed model: ``cost`` its cost estimate (RouteOPT's cost), ``risk`` what rule 1
    charges for it (``ModelStats.risk``: the estimate, or the probe's terms while the cost is
    unknown), ``alpha`` its share.
    """
    by_cost = sorted(range(len(cost)), key=cost.__getitem__)
    cheapest = cheapest_mix_cost(cost, alpha, by_cost)
    if cheapest > budget_limit(budget, cost):
        return Plan(alpha, budget, True)
    return limits(ledger, budget, budget, cost, risk, alpha, overdraft, reserve, window,
                  by_cost, cheapest)


def limits(ledger: Ledger, budget: float, target: float, cost: list[float], risk: list[float],
           alpha: list[float], overdraft: float, reserve: float, window: int,
           by_cost: list[int] | None = None, cheapest: float | None = None) -> Plan:
    """Rules 1 and 2 for a query whose planned spend is ``target`` (``budget``, the nominal
    per-query budget, for a policy that plans no other): rule 1's headroom is always the
    nominal budget line's, and rule 2 paces ``target`` by the same correction ``(b n - C_n) / W``
    for every query.  A contextual plan gives each context its own ``target`` ``b_x`` with
    ``sum_x f_x b_x = b`` (``stageroute.engine.context``), so the expected committed spend per
    query is ``(1 - rho) b + (b n - C_n) / W`` as above and rule 2's slack settles as stated.
    ``by_cost`` (the models by increasing cost) and ``cheapest`` (the cheapest mix within
    ``alpha``) are computed when not given."""
    if by_cost is None:
        by_cost = sorted(range(len(cost)), key=cost.__getitem__)
    if cheapest is None:
        cheapest = cheapest_mix_cost(cost, alpha, by_cost)
    n, committed = ledger.routed, ledger.committed
    headroom = (1.0 + overdraft) * budget * (n + 1) - committed
    if max(risk) > headroom:
        caps = [a if r <= headroom else 0.0 for a, r in zip(alpha, risk)]
        if sum(caps) < min(1.0, sum(alpha)) * (1.0 - 1e-12):
            # The affordable models cannot carry all traffic within their shares.
            return Plan(alpha, cheapest, False)
        cheapest = cheapest_mix_cost(cost, caps, by_cost)
    else:
        caps = alpha
    paced = (1.0 - reserve) * target + (budget * n - committed) / window
    return Plan(caps, max(min(paced, headroom), cheapest), False)
