"""Small display objects for listings (datasets, jobs), each with a text and an HTML face."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from ..contract.wire import DatasetInfo, JobStatus, PolicyInEffect, SchemaChange, is_dp
from .formats import count_text, dataset_text, point_text
from .progress import describe, stage_of

STATE_COLOURS = {
    "queued": "#6c757d",
    "running": "#0d6efd",
    "succeeded": "#198754",
    "failed": "#dc3545",
    "cancelled": "#fd7e14",
}


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], css: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{css}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Table:
    """A fixed-column table; deterministic in both faces."""

    css = "remote-magic-table"

    def __init__(self, header: Sequence[str], rows: Sequence[Sequence[str]], title: str = ""):
        self.header, self.rows, self.title = list(header), [list(r) for r in rows], title

    def __repr__(self) -> str:
        text = _text_table(self.header, self.rows)
        return f"{self.title}\n{text}" if self.title else text

    def _repr_html_(self) -> str:
        title = f"<p><b>{html.escape(self.title)}</b></p>" if self.title else ""
        return title + _html_table(self.header, self.rows, self.css)


def catalog_count(n: int | None, policy: PolicyInEffect | None) -> str:
    """A catalog's row count; in mode dp a noisy one, said as such (`~49,993 (noisy)`), so that it is not
    read as the table's size."""
    text = count_text(n, policy)
    return f"~{text} (noisy)" if n is not None and policy is not None and is_dp(policy.privacy) else text


class Datasets(list):
    """`Client.datasets()`: the catalog entries (a list of `DatasetInfo`), printed and shown in a notebook
    as `%remote_datasets` shows them, a noisy row count marked as noisy."""

    def __repr__(self) -> str:
        return repr(datasets_table(self))

    def _repr_html_(self) -> str:
        return datasets_table(self)._repr_html_()


def datasets_table(datasets: Sequence[DatasetInfo]) -> Table:
    rows = []
    for d in datasets:
        label = ", ".join(c.name for c in d.columns if c.role == "label")
        features = str(sum(c.role == "feature" for c in d.columns))
        if d.version is not None:
            version, count = str(d.version), catalog_count(d.rows, d.policy)
        else:  # no rows or columns to count yet
            version, count, features = ("unavailable" if d.unavailable else "none yet"), "-", "-"
        rows.append([d.name, version, count, label, features, d.description])
    return Table(["dataset", "version", "rows", "label", "features", "description"], rows)


# Arrow type names (from the Parquet footer) as a data scientist would say them; the first match wins.
PLAIN_TYPES = (
    (r"u?int\d*", "integer"),
    (r"(half)?float\d*|double", "float"),
    (r"decimal\d*\(.*\)", "decimal"),
    (r"(large_)?(string|utf8)", "text"),
    (r"bool", "boolean"),
    (r"timestamp\[.*\]", "timestamp"),
    (r"date\d+(\[.*\])?", "date"),
    (r"time\d+\[.*\]", "time of day"),
    (r"duration\[.*\]", "duration"),
    (r"dictionary<.*>", "category"),
    (r"(large_)?binary", "bytes"),
    (r"(large_)?list<.*>", "list"),
)


def plain_type(dtype: str) -> str:
    """`large_string` -> text, `timestamp[us, tz=UTC]` -> timestamp; an unknown name is shown as it is."""
    return next((plain for pattern, plain in PLAIN_TYPES if re.fullmatch(pattern, dtype)), dtype)


def columns_table(dataset: DatasetInfo) -> Table:
    rows = [
        [c.name, plain_type(c.dtype) + (" (inferred)" if c.inferred else ""), c.role] for c in dataset.columns
    ]
    title = f"{dataset_text(dataset.name, dataset.version)}: {dataset.unavailable or dataset.description}"
    return Table(["column", "type", "role"], rows, title=title)


def _change_text(change: SchemaChange | None) -> str:
    if change is None:
        return ""
    parts = [f"+{c}" for c in change.added] + [f"-{c}" for c in change.dropped]
    return ", ".join(parts + [f"{r.name}: {r.before} -> {r.after}" for r in change.retyped])


def versions_table(dataset: DatasetInfo) -> Table:
    rows = [
        [
            dataset_text(dataset.name, v.number),
            v.created[:19].replace("T", " "),
            catalog_count(v.rows, dataset.policy),
            v.schema_hash,
            _change_text(v.schema_change),
        ]
        for v in dataset.versions
    ]
    title = f"{dataset.name}: versions (a spec pins one as {dataset.name}@N; default the latest)"
    return Table(["version", "created (UTC)", "rows", "schema", "schema change"], rows, title=title)


def _progress_text(job: JobStatus) -> str:
    p = job.progress
    if job.state == "running" and p.stage == "training" and p.total_rounds:
        return f"training {p.round}/{p.total_rounds}"
    return stage_of(job) if job.state in ("queued", "running") else ""


def _metric_text(job: JobStatus) -> str:
    if job.error:
        return job.error.code
    return point_text(job.main_metric)


JOB_COLUMNS = [
    "job",
    "model",
    "rounds",
    "dataset",
    "kind",
    "state",
    "progress",
    "submitted (UTC)",
    "main metric",
    "origin",
]


def jobs_table(jobs: Sequence[JobStatus]) -> Table:
    """One row per job, with what tells jobs apart: the model, its rounds, the dataset and the metric."""
    rows = [
        [
            j.id,
            j.model or "",
            "" if j.rounds is None else str(j.rounds),
            dataset_text(j.dataset, j.dataset_version),
            j.kind,
            j.state,
            _progress_text(j),
            j.submitted_at[:19].replace("T", " "),
            _metric_text(j),
            _origin(j),
        ]
        for j in jobs
    ]
    return Table(JOB_COLUMNS, rows)


def _origin(job: JobStatus) -> str:
    """Which recipe ran it and why, what it continued, what it registered."""
    parts = []
    if job.recipe:
        parts.append(f"recipe {job.recipe} ({job.trigger or 'run'})")
    if job.base_model:
        parts.append(f"from {job.base_model}")
    if job.registration is not None:
        parts.append(job.registration.version or job.registration.state)
    return "; ".join(parts)


def job_html(job: JobStatus) -> str:
    """A job card: id, what runs where, its state as a badge, and a progress bar while it runs."""
    p = job.progress
    colour = STATE_COLOURS.get(job.state, "#6c757d")
    badge = (
        f"<span style='background:{colour};color:white;border-radius:4px;padding:1px 6px'>"
        f"{html.escape(job.state)}</span>"
    )
    bar = ""
    if job.state == "running" and p.total_rounds:
        bar = f"<progress value='{p.round}' max='{p.total_rounds}' style='width:14em'></progress> "
    detail = html.escape(describe(job))
    error = f"<br><span style='color:{colour}'>{html.escape(job.error.message)}</span>" if job.error else ""
    return (
        "<div class='remote-magic-job' style='font-family:sans-serif;line-height:1.6'>"
        f"<b>Job {html.escape(job.id)}</b> &middot; {html.escape(job.kind)} on "
        f"<b>{html.escape(job.dataset)}</b> &middot; {badge}<br>{bar}{detail}{error}"
        f"<br><small>submitted {html.escape(job.submitted_at[:19].replace('T', ' '))} UTC; "
        f"<code>%remote_job {html.escape(job.id)}</code> shows it again</small></div>"
    )
