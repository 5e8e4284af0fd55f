"""The webhooks resource: subscribe an allowed URL to events, list, delete, and see the deliveries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from remote_magic.contract.automation_wire import DeliveryList, Webhook, WebhookIn, WebhookList

from .deps import AuditDep, AutomationDep, User

router = APIRouter(prefix="/v1", tags=["webhooks"])

HookId = Annotated[str, Path(max_length=64)]


@router.post("/webhooks", response_model=Webhook, status_code=201)
def subscribe(automation: AutomationDep, audit: AuditDep, user: User, request: WebhookIn) -> Webhook:
    """Subscribe; the answer holds the signing secret, which is never shown again."""
    hook = automation.webhooks.subscribe(user.user, request)
    audit.record("webhook_subscribed", user.user, webhook=hook.id, events=hook.events)
    return hook


@router.get("/webhooks", response_model=WebhookList)
def list_webhooks(automation: AutomationDep, user: User) -> WebhookList:
    return WebhookList(webhooks=automation.webhooks.list(user.user))


@router.delete("/webhooks/{webhook_id}", status_code=204, response_class=Response)
def unsubscribe(automation: AutomationDep, audit: AuditDep, user: User, webhook_id: HookId) -> Response:
    automation.webhooks.delete(user.user, webhook_id)
    audit.record("webhook_deleted", user.user, webhook=webhook_id)
    return Response(status_code=204)


@router.get("/webhooks/{webhook_id}/deliveries", response_model=DeliveryList)
def deliveries(automation: AutomationDep, user: User, webhook_id: HookId) -> DeliveryList:
    automation.webhooks.owned(user.user, webhook_id)
    return DeliveryList(deliveries=automation.outbox.deliveries(webhook_id))
