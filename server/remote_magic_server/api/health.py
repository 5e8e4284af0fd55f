"""The server resource: health (for monitoring, no token) and whoami (who a token is)."""

from __future__ import annotations

from fastapi import APIRouter

from remote_magic import __version__
from remote_magic.contract.wire import Health, Whoami

from .deps import HubDep, SchedulerDep, SettingsDep, StoreDep, User

router = APIRouter(prefix="/v1", tags=["server"])


@router.get("/health", response_model=Health)
def health(settings: SettingsDep, store: StoreDep, scheduler: SchedulerDep, hub: HubDep) -> Health:
    store_ok = store.ping()
    counts = store.count_by_state() if store_ok else {}
    state = scheduler.state
    return Health(
        status="ok" if store_ok and state == "running" else "degraded",
        version=__version__,
        store="ok" if store_ok else "error",
        workers=settings.worker_count,
        running=scheduler.running_count(),
        queued=counts.get("queued", 0),
        scheduler=state,  # type: ignore[arg-type]
        auth=["token", "jupyterhub"] if hub is not None else ["token"],
    )


@router.get("/whoami", response_model=Whoami)
def whoami(user: User) -> Whoami:
    return Whoami(user=user.user, datasets=user.datasets)
