"""`GET /v1/budget`: what the caller has spent of their privacy budget on each mode-dp dataset, what is
left, and the jobs that spent it (failed and cancelled ones too: a job is charged once its rows are
admitted). Free: it reads the ledger, never a row."""

from __future__ import annotations

from fastapi import APIRouter

from remote_magic.contract.wire import BudgetReport

from .deps import DeskDep, User

router = APIRouter(prefix="/v1", tags=["datasets"])


@router.get("/budget", response_model=BudgetReport)
def budget(desk: DeskDep, user: User) -> BudgetReport:
    return desk.budget(user.user, list(user.datasets))
