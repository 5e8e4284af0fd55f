"""The recipes resource: save a spec, a model and triggers; list, pause, resume, delete, run by hand."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Response, UploadFile
from pydantic import ValidationError

from remote_magic.contract.automation_wire import Recipe, RecipeIn, RecipeList
from remote_magic.contract.codes import Refusal
from remote_magic.contract.wire import JobStatus, first_error

from .deps import AuditDep, AutomationDep, RegistryDep, SettingsDep, StoreDep, User
from .jobs import own_job, status_of

router = APIRouter(prefix="/v1", tags=["recipes"])

Name = Annotated[str, Path(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]


@router.post("/recipes", response_model=Recipe, status_code=201)
async def save_recipe(
    settings: SettingsDep,
    automation: AutomationDep,
    audit: AuditDep,
    user: User,
    recipe: Annotated[str, Form(description="RecipeIn as JSON.", max_length=100_000)],
    model: Annotated[
        UploadFile | None, File(description="The model (cloudpickle); optional with base_model.")
    ] = None,
) -> Recipe:
    """Create or replace a recipe; it runs on the next change its triggers watch, never at once."""
    try:
        parsed = RecipeIn.model_validate_json(recipe)
    except ValidationError as exc:
        raise Refusal(
            "invalid_request", f"recipe field {first_error(exc.errors(), 'recipe')}"[:300]
        ) from None
    limit = settings.server.max_payload_mb * 2**20
    payload = await model.read(limit + 1) if model is not None else b""
    if len(payload) > limit:
        raise Refusal("payload_too_large", f"the model is larger than {settings.server.max_payload_mb} MiB")
    saved = await asyncio.to_thread(automation.save_recipe, user.user, user.datasets, parsed, payload)
    audit.record("recipe_saved", user.user, recipe=parsed.name, dataset=parsed.spec.dataset)
    return saved


@router.get("/recipes", response_model=RecipeList)
def list_recipes(automation: AutomationDep, user: User) -> RecipeList:
    return RecipeList(recipes=automation.recipes.list(user.user))


@router.get("/recipes/{name}", response_model=Recipe)
def get_recipe(automation: AutomationDep, user: User, name: Name) -> Recipe:
    return automation.recipes.get(user.user, name).recipe  # type: ignore[union-attr]


@router.post("/recipes/{name}/pause", response_model=Recipe)
def pause_recipe(automation: AutomationDep, user: User, name: Name) -> Recipe:
    automation.recipes.set_state(user.user, name, "paused", "paused by its owner")
    return automation.recipes.get(user.user, name).recipe  # type: ignore[union-attr]


@router.post("/recipes/{name}/resume", response_model=Recipe)
def resume_recipe(automation: AutomationDep, user: User, name: Name) -> Recipe:
    automation.recipes.set_state(user.user, name, "active")
    return automation.recipes.get(user.user, name).recipe  # type: ignore[union-attr]


@router.post("/recipes/{name}/run", response_model=JobStatus, status_code=202)
async def run_recipe(
    store: StoreDep, registry: RegistryDep, automation: AutomationDep, user: User, name: Name
) -> JobStatus:
    job_id = await asyncio.to_thread(automation.run_now, user.user, name)
    return status_of(own_job(store, user, job_id), registry)


@router.delete("/recipes/{name}", status_code=204, response_class=Response)
def delete_recipe(automation: AutomationDep, audit: AuditDep, user: User, name: Name) -> Response:
    automation.recipes.delete(user.user, name)
    audit.record("recipe_deleted", user.user, recipe=name)
    return Response(status_code=204)
