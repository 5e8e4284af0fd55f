"""The client's calls for the automation: the model registry, recipes and webhooks (mixed into `Client`).

One method per endpoint with typed results, like the rest of the client; the magics call these.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from pydantic import ValidationError

from ..contract.automation_wire import (
    AliasMove,
    Condition,
    DeliveryList,
    LineageChain,
    ModelList,
    ModelVersion,
    Recipe,
    RecipeIn,
    RecipeList,
    RegisterRequest,
    Triggers,
    Webhook,
    WebhookIn,
    WebhookList,
)
from ..contract.payload import package_model
from ..contract.specs import with_model_classes
from ..contract.wire import NAME_RULE, DatasetInfo, DatasetSpec, JobStatus, first_error
from ..display.lineage import LineageView
from ..display.model import RemoteModel

if TYPE_CHECKING:
    import requests

    from ..contract.automation_wire import Delivery
    from .job import Job


def register_request(
    register: str | dict | RegisterRequest | None, alias: str | None = None, when: str | dict | None = None
) -> RegisterRequest | None:
    """`"churn"`, a dict or a RegisterRequest; `when="auc:0.002"` registers only on that improvement. A
    wrong one is a ValueError of one line (a user reads it under the cell: no pydantic dump)."""
    if register is None:
        return None
    try:
        if isinstance(register, RegisterRequest):
            request = register
        elif isinstance(register, str):
            request = RegisterRequest(name=register)
        else:
            request = RegisterRequest.model_validate(register)
        updates: dict = {}
        if alias is not None:
            updates["alias"] = alias
        if when is not None:
            updates["when"] = condition(when)
        return RegisterRequest.model_validate({**request.model_dump(), **updates}) if updates else request
    except ValidationError as exc:
        raise ValueError(registration_error(exc.errors())) from None


def registration_error(errors: Sequence[Mapping]) -> str:
    """A name that breaks the pattern is said with what a name is (the user's own argument is quoted, so
    they see which one); any other error as its field and message."""
    first = errors[0] if errors else {}
    field = first.get("loc", ("",))[0]
    if first.get("type") == "string_pattern_mismatch" and field in ("name", "alias"):
        what = "model name" if field == "name" else "alias"
        return f"{first.get('input')!r} is not a valid {what}: {NAME_RULE}"
    return first_error(errors, "register")


def condition(when: str | dict | Condition) -> Condition:
    """`"auc"`, `"auc:0.002"` (eval auc improves by at least 0.002), a dict or a Condition."""
    if isinstance(when, Condition):
        return when
    if isinstance(when, dict):
        return Condition.model_validate(when)
    metric, _, by = when.partition(":")
    try:
        margin = float(by) if by.strip() else 0.0
    except ValueError:
        said = f"{by.strip()!r} is not a number"
        raise ValueError(f"{said}: say METRIC or METRIC:MARGIN, e.g. auc:0.002") from None
    return Condition(metric=metric.strip(), min_improvement=margin)


class RegistryCalls:
    """Registry, recipes and webhooks; `Client` provides `_request` and `job`."""

    _request: Callable[..., requests.Response]
    _dataset_info: Callable[[str], DatasetInfo]
    job: Callable[[str], Job]
    rho_left: Callable[[str], float | None]
    _label_kind: Callable[[str, str | None], str | None]

    # the registry
    def models(self, name: str | None = None) -> ModelList:
        """Registered models you may use, with their versions, lineage and main metric."""
        params = {"name": name} if name else {}
        return ModelList.model_validate(self._request("GET", "/models", params=params).json())

    def model(self, ref: str) -> ModelVersion:
        """One version: `churn@3`, `churn@latest` or `churn@champion`."""
        return ModelVersion.model_validate(self._request("GET", f"/models/{ref}").json())

    def download_version(self, ref: str) -> bytes:
        """A version's model as XGBoost JSON bytes: a DP model (its `training` is set) for whoever may
        see the version; any other only for its owner, once the data owner approved it."""
        return self._request("GET", f"/models/{ref}/model").content

    def load_version(self, ref: str) -> RemoteModel:
        """A registered version's model, loaded like `load_model` (`.estimator`, `.booster`, its cost):
        a classifier's `predict` gives the label's values from the classes the version carries (its
        job's released ones), whoever owns it, not XGBoost's codes 0, 1, ..."""
        version = self.model(ref)
        data = self.download_version(version.ref)
        dataset = version.lineage.dataset
        left = self.rho_left(dataset) if version.training is not None else None
        kind = self._label_kind(dataset, version.label) if version.classes else None
        derive = version.lineage.spec.derive
        return RemoteModel.load(
            data,
            version.lineage.job_id,
            dataset,
            version.training,
            left,
            version.classes,
            version.ref,
            kind,
            derive,
        )

    def lineage(self, ref: str) -> LineageView:
        """A version and its ancestors (parent versions, data, metrics), newest first; `.plot()` draws it."""
        return LineageView(LineageChain.model_validate(self._request("GET", f"/models/{ref}/lineage").json()))

    def set_alias(self, name: str, alias: str, version: int) -> ModelVersion:
        body = AliasMove(version=version).model_dump()
        return ModelVersion.model_validate(
            self._request("PUT", f"/models/{name}/aliases/{alias}", json=body).json()
        )

    def delete_version(self, ref: str) -> None:
        """Delete a registered version you own; its model file is pruned like any unregistered one."""
        self._request("DELETE", f"/models/{ref}")

    # recipes
    def save_recipe(
        self,
        name: str,
        spec: DatasetSpec | dict,
        model: object = None,
        kind: str = "train",
        base_model: str | None = None,
        on_new_data: bool = False,
        on_new_model: str | None = None,
        every: str | None = None,
        register: str | dict | RegisterRequest | None = None,
        alias: str | None = None,
        when: str | dict | None = None,
    ) -> Recipe:
        """Save (or replace) a recipe: it runs `model` on `spec` whenever one of its triggers fires (with
        a fitted classifier's classes, as `submit` sends them)."""
        spec = spec if isinstance(spec, DatasetSpec) else DatasetSpec.model_validate(spec)
        if model is not None:
            spec = with_model_classes(model, spec, self._dataset_info(spec.dataset))
        recipe = RecipeIn(
            name=name,
            kind=kind,  # type: ignore[arg-type]
            spec=spec,
            base_model=base_model,
            triggers=Triggers(on_new_data=on_new_data, on_new_model=on_new_model, every=every),
            register_as=register_request(register, alias, when),
        )
        data = {"recipe": recipe.model_dump_json(exclude_none=True)}
        files = None
        if model is not None:
            files = {"model": ("model.pkl", package_model(model), "application/octet-stream")}
        return Recipe.model_validate(self._request("POST", "/recipes", data=data, files=files).json())

    def recipes(self) -> list[Recipe]:
        return RecipeList.model_validate(self._request("GET", "/recipes").json()).recipes

    def recipe(self, name: str) -> Recipe:
        return Recipe.model_validate(self._request("GET", f"/recipes/{name}").json())

    def pause_recipe(self, name: str) -> Recipe:
        return Recipe.model_validate(self._request("POST", f"/recipes/{name}/pause").json())

    def resume_recipe(self, name: str) -> Recipe:
        return Recipe.model_validate(self._request("POST", f"/recipes/{name}/resume").json())

    def run_recipe(self, name: str) -> Job:
        """Run a recipe now, by hand; returns the job's handle."""
        status = JobStatus.model_validate(self._request("POST", f"/recipes/{name}/run").json())
        return self.job(status.id)

    def delete_recipe(self, name: str) -> None:
        self._request("DELETE", f"/recipes/{name}")

    # webhooks
    def subscribe(self, url: str, events: list[str] | str) -> Webhook:
        """Subscribe a URL (on the server's allowlist) to events; keep the returned `secret` to verify
        deliveries with `remote_magic.webhooks.verify`: it is shown only this once."""
        events = [events] if isinstance(events, str) else list(events)
        body = json.loads(WebhookIn(url=url, events=events).model_dump_json())  # type: ignore[arg-type]
        return Webhook.model_validate(self._request("POST", "/webhooks", json=body).json())

    def webhooks(self) -> list[Webhook]:
        return WebhookList.model_validate(self._request("GET", "/webhooks").json()).webhooks

    def unsubscribe(self, webhook_id: str) -> None:
        self._request("DELETE", f"/webhooks/{webhook_id}")

    def deliveries(self, webhook_id: str) -> list[Delivery]:
        """A webhook's deliveries, newest first, with their state and attempts."""
        return DeliveryList.model_validate(
            self._request("GET", f"/webhooks/{webhook_id}/deliveries").json()
        ).deliveries
