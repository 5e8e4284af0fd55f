"""FastAPI dependencies: the app's parts (settings, store, scheduler, describer, release desk, audit
log, notifier, dataset versions) and the signed-in user, so routes declare what they use instead of
reaching into `app.state`. They are coroutines, so FastAPI does not send them to its thread pool."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials

from ..audit import AuditLog
from ..automation.service import Automation
from ..config.settings import Settings
from ..data.versions import Versions
from ..intake.submissions import Intake
from ..jobs.oneshot import Describer, FederatedSteps
from ..jobs.scheduler import Scheduler
from ..jobs.store import Store
from ..registry.access import Registry
from ..release.desk import ReleaseDesk
from .auth import LastUsed, authenticate, bearer
from .hub import HubSignIn
from .notifier import Notifier
from .principal import Principal


def _part(name: str) -> Callable[[Request], Awaitable[object]]:
    """A dependency that hands a route one of the parts `create_app` put on the app."""

    async def get(request: Request) -> object:
        return getattr(request.app.state, name)

    return get


SettingsDep = Annotated[Settings, Depends(_part("settings"))]
StoreDep = Annotated[Store, Depends(_part("store"))]
SchedulerDep = Annotated[Scheduler, Depends(_part("scheduler"))]
DeskDep = Annotated[ReleaseDesk, Depends(_part("desk"))]
DescriberDep = Annotated[Describer, Depends(_part("describer"))]
FederatedDep = Annotated[FederatedSteps, Depends(_part("federated"))]
AuditDep = Annotated[AuditLog, Depends(_part("audit"))]
NotifierDep = Annotated[Notifier, Depends(_part("notifier"))]
RegistryDep = Annotated[Registry, Depends(_part("registry"))]
IntakeDep = Annotated[Intake, Depends(_part("intake"))]
AutomationDep = Annotated[Automation, Depends(_part("automation"))]
LastUsedDep = Annotated[LastUsed, Depends(_part("last_used"))]
HubDep = Annotated[HubSignIn | None, Depends(_part("hub"))]
VersionsDep = Annotated[Versions, Depends(_part("versions"))]


async def current_user(
    request: Request,
    store: StoreDep,
    last_used: LastUsedDep,
    hub: HubDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The signed-in user, also left in the request's state for the audit log (api/auditing.py)."""
    principal = await authenticate(store, last_used, hub, credentials)
    request.state.principal = principal
    return principal


User = Annotated[Principal, Depends(current_user)]
