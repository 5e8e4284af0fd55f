"""A spec as the analyst gives it (a `DatasetSpec` or a dict), checked before anything is sent.

Its own module so that the client and the dry run take the same input without importing each other.
"""

from __future__ import annotations

from pydantic import ValidationError

from ..contract.wire import DatasetSpec, spec_error
from .errors import SpecError


def as_spec(spec: DatasetSpec | dict) -> DatasetSpec:
    """A spec dict checked here, so a misspelt key is named before anything is sent."""
    if isinstance(spec, DatasetSpec):
        return spec
    try:
        return DatasetSpec.model_validate(spec)
    except ValidationError as exc:
        raise SpecError("invalid_spec", spec_error(exc.errors())) from None
