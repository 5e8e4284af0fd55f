"""Recipes' triggers: compare what a recipe has seen with what is there now, and fire on a difference.

- `on_new_data`: the latest version of the spec's dataset (dataset_versions.py) differs from the one seen;
- `on_new_model NAME`: NAME has a newer version, or one of its aliases points elsewhere;
- `every`: a new period (of `every` seconds since the epoch) has begun.
A recipe saved now has seen what is there now, so saving never fires it. Whatever changed while the
server was down is seen at the first check after a restart, and fires once.
"""

from __future__ import annotations

import time

from remote_magic.contract.automation_wire import RecipeIn

from ..config.sources import parse_duration
from ..registry.records import ModelRegistry
from .dataset_versions import DatasetVersions
from .recipes import Fire, Recipes


class TriggerCheck:
    def __init__(self, recipes: Recipes, versions: DatasetVersions, models: ModelRegistry):
        self.recipes = recipes
        self.versions = versions
        self.models = models

    def marks(self, recipe: RecipeIn, at: float | None = None) -> dict:
        """What the recipe's triggers watch, as it is now."""
        triggers = recipe.triggers
        marks: dict = {}
        if triggers.on_new_data:
            marks["data"] = self.versions.latest(recipe.spec.dataset)
        if triggers.on_new_model:
            latest = self.models.latest(triggers.on_new_model)
            marks["model"] = {
                "latest": latest.number if latest else 0,
                "aliases": self.models.aliases(triggers.on_new_model),
            }
        if triggers.every:
            marks["every"] = int((time.time() if at is None else at) // parse_duration(triggers.every))
        return marks

    @staticmethod
    def _changes(recipe: RecipeIn, seen: dict, now: dict) -> list[tuple[str, str]]:
        """(key part, sentence) for each trigger whose mark moved."""
        changes = []
        if "data" in now and now["data"] is not None and now["data"] != seen.get("data"):
            changes.append((f"data:{now['data']}", f"new version {now['data']} of {recipe.spec.dataset}"))
        if "model" in now and now["model"] != seen.get("model"):
            name = recipe.triggers.on_new_model
            old = seen.get("model") or {"latest": 0, "aliases": {}}
            words = []
            if now["model"]["latest"] != old["latest"]:
                words.append(f"new version {name}@{now['model']['latest']}")
            for alias, number in sorted(now["model"]["aliases"].items()):
                if old["aliases"].get(alias) != number:
                    words.append(f"alias {alias} moved to {name}@{number}")
            mark = f"{now['model']['latest']}:" + ",".join(
                f"{a}={n}" for a, n in sorted(now["model"]["aliases"].items())
            )
            if words:
                changes.append((f"model:{mark}", "; ".join(words)))
        if "every" in now and seen.get("every") is not None and now["every"] > seen["every"]:
            changes.append((f"every:{now['every']}", f"every {recipe.triggers.every}"))
        return changes

    def check(self, at: float | None = None) -> list[Fire]:
        """Fire each active recipe whose watched marks moved (as of `at`, default now); return the fires."""
        fires = []
        for stored in self.recipes.active():
            now = self.marks(stored.recipe, at)
            changes = self._changes(stored.recipe, stored.seen, now)
            if not changes:
                continue
            key = "+".join(part for part, _ in changes)
            fire = self.recipes.fire(
                stored.owner, stored.recipe.name, key, "; ".join(text for _, text in changes), now
            )
            if fire is not None:
                fires.append(fire)
        return fires
