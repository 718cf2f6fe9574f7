"""Pure StageRoute solvers: confidence bounds, RouteOPT, DeployOPT (numpy + OR-Tools, no I/O)."""

from solvers.bounds import confidence_radius, cost_lcb, model_bounds, reward_ucb
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
    "DeploySolution",
    "RouteSolution",
    "confidence_radius",
    "cost_lcb",
    "deploy_opt",
    "model_bounds",
    "reward_ucb",
    "route_opt",
]
