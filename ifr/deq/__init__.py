"""Deep-equilibrium core of IFR: the residual block, fixed-point solvers, implicit backward, the layer and
the tower built on it.

Depends on torch only (and ``ifr.errors``' plain exception types); detection code builds on it, never the
reverse.
"""
from .backward import ImplicitBackward, PhantomBackward
from .block import IFRBlock
from .jacobian import jacobian_frobenius_estimate
from .layer import MODES, BlockMap, EquilibriumRefinement
from .recording import recorded_inputs
from .sharing import DistinctSamples, distinct_samples
from .precision import ieee_float32
from .solvers import (SOLVERS, SolverConfig, SolverStats, SyncPolicy, anderson_solve, broyden_solve,
                      cvpods_broyden_solve, fixed_point_solve, get_solver)
from .tower import FORMS, RefinementTower, TowerConfigError
from .weight_norm import WeightNormConv2d

__all__ = [
    "BlockMap", "DistinctSamples", "EquilibriumRefinement", "FORMS", "IFRBlock", "ImplicitBackward", "MODES",
    "PhantomBackward", "RefinementTower", "SOLVERS", "SolverConfig", "SolverStats", "SyncPolicy", "TowerConfigError",
    "WeightNormConv2d", "anderson_solve", "broyden_solve", "cvpods_broyden_solve", "distinct_samples", "fixed_point_solve", "get_solver",
    "ieee_float32", "jacobian_frobenius_estimate", "recorded_inputs",
]
