"""Pure StageRoute solvers: confidence bounds, RouteOPT, DeployOPT (numpy + OR-Tools, no I/O)."""

from solvers.compiled import check

COMPILED = check(__file__)  # before any module of the package is imported

# ruff: noqa: E402

from solvers.bounds import confidence_radius, cost_lcb, model_bounds, reward_ucb
from solvers.context_deploy import ContextDeploySolution, context_deploy_opt
from solvers.context_lp import ContextPlanSolution, context_lp
from solvers.deploy_opt import DeploySolution, deploy_opt
from solvers.route_opt import (
    BUDGET_INFEASIBLE,
    CAPS_BUDGET_INFEASIBLE,
    CAPS_INFEASIBLE,
    OPTIMAL,
    RouteSolution,
    route_opt,
)

__all__ = [
    "BUDGET_INFEASIBLE",
    "CAPS_BUDGET_INFEASIBLE",
    "CAPS_INFEASIBLE",
    "OPTIMAL",
    "ContextDeploySolution",
    "ContextPlanSolution",
    "DeploySolution",
    "RouteSolution",
    "confidence_radius",
    "context_deploy_opt",
    "context_lp",
    "cost_lcb",
    "deploy_opt",
    "model_bounds",
    "reward_ucb",
    "route_opt",
]
