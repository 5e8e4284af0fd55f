"""The job a magic names, resolved the same way by every magic that takes one (`%remote_job`,
`%remote_model`, `%remote_cancel`): a job id, a variable of the notebook holding a job or its result, a
registered version `NAME@N` where the magic takes one, or, given nothing, the last job of this session.

Why one place: each magic read its word its own way, so a result variable worked in one and was "no such
job" in another, and a word that was neither a variable nor an id was sent to the server as an id.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from IPython.core.error import UsageError

JOB_ID = re.compile(r"[0-9a-f]{16}")  # the server's job ids: 16 hex digits


def job_target(
    word: str | None, namespace: Mapping[str, object], last: str | None, magic: str, versions: bool = False
) -> str:
    """The job id (or, with `versions`, the `NAME@N` reference) that `word` names in `%magic`; a
    UsageError saying what the word was not, and what the magic takes, otherwise."""
    from ..client.job import Job
    from ..display.result import TrainResult

    takes = "a job id, a variable holding a job or its result"
    takes += ", or a registered version NAME@N" if versions else ""
    word = (word or "").strip()
    if not word:
        if last is None:
            raise UsageError(f"%{magic} needs a job ({takes}): no job has run in this session yet")
        return last
    if "@" in word:
        if versions:
            return word
        raise UsageError(f"{word!r} is a registered version; %{magic} takes {takes}")
    if word.isidentifier() and word in namespace:
        value = namespace[word]
        if isinstance(value, TrainResult):
            return value.job_id
        if isinstance(value, Job):
            return value.id
        raise UsageError(
            f"{word!r} holds a {type(value).__name__}, not a job or its result; %{magic} takes {takes}"
        )
    if JOB_ID.fullmatch(word):
        return word
    raise UsageError(f"{word!r} is neither a variable in this notebook nor a job id; %{magic} takes {takes}")
