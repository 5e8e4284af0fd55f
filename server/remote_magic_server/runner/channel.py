"""The child's end of the protocol: typed messages out as JSON (noise requests as noise frames), the
parent's decisions and answers in; and `serve`, which turns whatever ends a child's task into one message
(a confined worker's and a driver's alike)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from remote_magic.contract.codes import Refusal

from ..protocol import (
    MAX_BATCHED_NOISE,
    Admission,
    Decision,
    Failure,
    NoiseAnswer,
    NoiseAnswers,
    ProgressNote,
    TrainingPlan,
    noise_frame,
)

log = logging.getLogger("remote_magic_server.worker")


class Channel:
    def __init__(self, conn: Connection):
        self.conn = conn

    def send(self, message: BaseModel) -> None:
        self.conn.send_bytes(message.model_dump_json().encode())

    def stage(self, stage: str, round: int = 0, total: int = 0, metric: dict | None = None) -> None:
        self.send(ProgressNote(stage=stage, round=round, total=total, metric=metric))  # type: ignore[arg-type]

    def admit(self, admission: Admission) -> Decision:
        """Tell the parent which rows were admitted; wait for its decision (proceed or stop)."""
        self.send(admission)
        return Decision.model_validate_json(self.conn.recv_bytes())

    def declare(self, settings: Any, sketched: list[str], sketch_rho: float, continuing: bool) -> None:
        """Tell the parent a DP training's public plan (`Run.declare`), before its first noise request."""
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}
        plan = TrainingPlan(settings=fields, sketched=sketched, sketch_rho=sketch_rho, continuing=continuing)
        self.send(plan)

    def noise(self, values: list[float], l2: float, rho: float) -> list[float]:
        """Gaussian noise on `values` from the parent (a DP training's `Run.noise`); wait for it."""
        answer = self._ask("gaussian", values, l2, rho)
        if len(answer.values) != len(values):
            raise ValueError("the parent's answer does not match the request")
        return answer.values

    def noise_many(self, releases: list[tuple[list[float], float, float]]) -> list[list[float]]:
        """Gaussian noise on several `(values, l2, rho)` at once (a DP training's `Run.noise_many`):
        one message and one answer, each release checked and charged by the parent as `noise` is."""
        asks = [("gaussian", values, l2, rho) for values, l2, rho in releases]
        self.conn.send_bytes(noise_frame(asks, batch=True))
        answers = NoiseAnswers.model_validate_json(self.conn.recv_bytes()).answers
        if len(answers) != len(asks) or any(len(a.values) != len(q[1]) for a, q in zip(answers, asks)):
            raise ValueError("the parent's answers do not match the batch")
        return [answer.values for answer in answers]

    def select(self, scores: np.ndarray, linf: float, rho: float) -> int:
        """The parent's noisy choice of about the highest score (a DP training's `Run.select`)."""
        index = self._ask("top1", scores, linf, rho).index
        if index is None or not 0 <= index < len(scores):
            raise ValueError("the parent's answer is not an index of the scores")
        return index

    def select_many(self, asks: list[tuple[np.ndarray, float, float]]) -> list[int]:
        """Several noisy choices (a DP training's `Run.select_many`: a level's per-node selections), each
        checked and charged by the parent as `select` is, in messages of at most MAX_BATCHED_NOISE: a
        depth-6 tree's 32 nodes' choices in 2 round trips, not 32."""
        chosen: list[int] = []
        for start in range(0, len(asks), MAX_BATCHED_NOISE):
            part = asks[start : start + MAX_BATCHED_NOISE]
            self.conn.send_bytes(noise_frame([("top1", s, b, r) for s, b, r in part], batch=True))
            answers = NoiseAnswers.model_validate_json(self.conn.recv_bytes()).answers
            if len(answers) != len(part):
                raise ValueError("the parent's answers do not match the batch")
            for answer, (scores, _, _) in zip(answers, part, strict=True):
                if answer.index is None or not 0 <= answer.index < len(scores):
                    raise ValueError("the parent's answer is not an index of the scores")
                chosen.append(answer.index)
        return chosen

    def _ask(self, kind: str, values: list[float] | np.ndarray, bound: float, rho: float) -> NoiseAnswer:
        self.conn.send_bytes(noise_frame([(kind, values, bound, rho)], batch=False))
        return NoiseAnswer.model_validate_json(self.conn.recv_bytes())


def serve(job_dir: str, conn: Connection, body: Callable[[Path, Channel], None]) -> None:
    """Run `body` in a worker-like process: a refusal becomes a `failure` with its fixed code, anything
    unexpected `internal_error` (its traceback in the server log only); then the process ends."""
    channel = Channel(conn)
    folder = Path(job_dir)
    try:
        body(folder, channel)
    except Refusal as exc:
        channel.send(Failure(code=exc.code, message=exc.message[:500]))
    except MemoryError:
        channel.send(Failure(code="out_of_memory", message="the job ran out of memory"))
    except Exception:  # noqa: BLE001 - every failure must become a fixed code
        log.exception("task %s failed", folder.name)
        channel.send(Failure(code="internal_error", message="the job failed on the server"))
    finally:
        conn.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
