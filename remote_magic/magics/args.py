"""Build a DatasetSpec from magic flags and, when `--spec VAR` names one, a spec variable (flags win)."""

from __future__ import annotations

from argparse import Namespace

from IPython.core.error import UsageError
from pydantic import BaseModel, ValidationError

from ..contract.wire import DatasetSpec, EvalFraction, spec_error


def bounded(flag: str, value: int | None, model: type[BaseModel], field: str, note: str = "") -> None:
    """Refuse an integer option outside the bounds of the wire field it sets, in one sentence that names
    the option and its range (`--importance must be an integer from 0 to 10 (0: none)`), read from
    the field itself so the magic and the wire cannot disagree."""
    if value is None:
        return
    low = high = None
    for bound in model.model_fields[field].metadata:
        low = getattr(bound, "ge", low)
        high = getattr(bound, "le", high)
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise UsageError(f"{flag} must be an integer {span}{note}")


def spec_from_args(args: Namespace, base: object = None) -> DatasetSpec:
    """Merge the flags over `base` (a dict or DatasetSpec); raise UsageError on a bad combination."""
    if isinstance(base, DatasetSpec):
        fields = base.model_dump(exclude_none=True)
    elif isinstance(base, dict):
        fields = dict(base)
    else:
        fields = {}
    for name in ("dataset", "label", "where"):
        value = getattr(args, name, None)
        if value is not None:
            fields[name] = value
    if args.features is not None:
        fields["features"] = [f.strip() for f in args.features.split(",") if f.strip()]
    classes = getattr(args, "classes", None)
    if classes is not None:
        fields["classes"] = [c.strip() for c in classes.split(",") if c.strip()]
    if args.eval_fraction is not None and args.eval_where is not None:
        raise UsageError("give either --eval-fraction or --eval-where, not both")
    if args.eval_where is not None:
        fields["eval"] = {"where": args.eval_where}
    elif args.eval_fraction is not None or args.seed is not None:
        current = fields.get("eval") if isinstance(fields.get("eval"), dict) else {}
        fraction = args.eval_fraction if args.eval_fraction is not None else current.get("fraction", 0.2)
        seed = args.seed if args.seed is not None else current.get("seed", 0)
        fields["eval"] = {"fraction": fraction, "seed": seed}
    bounded("--seed", args.seed, EvalFraction, "seed")
    missing = [f"--{name}" for name in ("dataset", "label") if not fields.get(name)]
    try:
        return DatasetSpec.model_validate(fields)
    except ValidationError as exc:
        errors = exc.errors()
        if missing and not any(e.get("type") == "extra_forbidden" for e in errors):
            raise UsageError(
                f"missing {' and '.join(missing)} (or name a spec dict with --spec VAR)"
            ) from None
        # a misspelt key (`lable`) is named before the field it was meant for is called missing
        raise UsageError(spec_error(errors, flags=True)) from None
