"""The proof's formula (`dpboost.total_rho`) for a trainer's settings at given noise scales: what the
tests of the DP trainer's cost compare the ledger's charge and the cost preview's noise against."""

from __future__ import annotations

from remote_magic.families.dpboost import Settings, total_rho
from remote_magic.families.dpboost.accounting import Scales


def accountant_total(trainer: Settings, scales: Scales, sketch_rho: float = 0.0) -> float:
    """The zCDP cost the accountant adds up for a training with these settings and noise scales."""
    objective = trainer.objective_()
    return total_rho(
        trainer.rounds,
        objective.gradient_bound,
        objective.hessian_bound,
        scales.sigma_g,
        scales.sigma_h,
        objective.intercept_bound,
        scales.sigma_intercept,
        sketch_rho,
        trainer.select_bound,
        scales.sigma_select,
        trainer.selections_per_round,
    )
