"""The worker's end of the protocol: typed messages out as JSON, the parent's decision in."""

from __future__ import annotations

from multiprocessing.connection import Connection

from pydantic import BaseModel

from ..protocol import Admission, Decision, ProgressNote


class Channel:
    def __init__(self, conn: Connection):
        self.conn = conn

    def send(self, message: BaseModel) -> None:
        self.conn.send_bytes(message.model_dump_json().encode())

    def stage(self, stage: str, round: int = 0, total: int = 0, metric: dict | None = None) -> None:
        self.send(ProgressNote(stage=stage, round=round, total=total, metric=metric))  # type: ignore[arg-type]

    def admit(self, admission: Admission) -> bool:
        """Tell the parent which rows were admitted; wait for its decision (proceed or stop)."""
        self.send(admission)
        return Decision.model_validate_json(self.conn.recv_bytes()).proceed
