"""The driver of a cluster job: the server's one Dask client for the job, trusted code on canonical data.

It never sees the submitted bytes: a confined local worker decoded them (a `plan` task) and the parent
wrote this process its `DriverTask` (the job's task, the canonical plan, the cluster). It speaks the
same protocol to the parent as a local worker (progress, admission and the parent's decision, then a
report or a failure), so the scheduler and the release desk cannot tell the difference. On the cluster
it runs only server functions (`partitions.py`) and `xgboost.dask`; what it gathers are aggregates
(`_gather` refuses anything else), and the booster.

A scheduler that cannot be reached within `connect_timeout_s` ends the job with `cluster_unavailable`;
a training worker that leaves the cluster ends it with `cluster_worker_lost` as soon as the scheduler
notices (the surviving workers give up within `collective_timeout_s`); SIGTERM from the parent (a
cancel) tells the training workers to stop after their current round, then ends the driver.

Why it is long: it is the whole of a cluster job on the trusted side (stage, admit, train, follow,
score, report) and the merging of what the partitions sent back; its steps share one job's state, and
the rule that only aggregates come back is easiest to audit where every gather is in sight.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections import Counter
from multiprocessing.connection import Connection
from operator import itemgetter
from pathlib import Path
from urllib.parse import urlsplit

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xgboost as xgb
from distributed import Client, Future, KilledWorker, Security, Variable
from pyroaring import BitMap
from xgboost import dask as dxgb

from remote_magic.contract import rows
from remote_magic.contract.codes import Refusal
from remote_magic.families import partials, scoring
from remote_magic.families.base import Labels, Plan, is_classifier_task
from remote_magic.families.xgboost.family import FAMILY, category_lists, fewest_in_a_leaf

from ..protocol import (
    Admission,
    ClusterConfig,
    Confusion,
    CurveReport,
    CurveStats,
    DriverTask,
    EvalStats,
    LeafFacts,
    RoundsReport,
    SplitCounts,
    Structure,
    TrainReport,
)
from ..runner import evidence
from ..runner.channel import Channel
from ..runner.launch import serve
from ..worker.model_task import checkpoints
from . import partitions

log = logging.getLogger("remote_magic_server.cluster")

POLL_S = 0.2
WORKERS_EVERY_S = 1.0
STOP_GRACE_S = 10.0
MAX_GATHER_BYTES = 64 * 2**20
LOSS_NOTICE_S = 5.0  # how long a failed collective waits for the scheduler to notice a lost worker
LOST_WORKER = "a machine of the training cluster was lost; the job was stopped"


def _gather(client: Client, futures: list[Future]) -> list[dict]:
    """Results of server functions that return aggregates: dicts of counts, sums and bitmaps, never rows.
    Anything else is refused before it is used."""
    results = client.gather(futures)
    for result in results:
        if not isinstance(result, dict):
            raise TypeError(f"a cluster task returned {type(result).__name__}, not an aggregate")
        if sys.getsizeof(result) > MAX_GATHER_BYTES:
            raise TypeError("a cluster task returned more than an aggregate")
    return results


def security(cluster: ClusterConfig) -> Security | None:
    if cluster.tls_cert is None:
        return None
    return Security(
        tls_ca_file=cluster.tls_ca_file,
        tls_client_cert=cluster.tls_cert,
        tls_client_key=cluster.tls_key,
        require_encryption=True,
    )


class Driver:
    def __init__(self, job: DriverTask, folder: Path, channel: Channel):
        self.job = job
        self.task = job.task
        self.folder = folder
        self.channel = channel
        self.stopping = threading.Event()
        self.names = {
            "progress": f"remote-magic-progress-{folder.name}",
            "cancel": f"remote-magic-cancel-{folder.name}",
        }

    def run(self) -> TrainReport | None:
        cluster = self.job.cluster
        try:
            client = Client(
                cluster.scheduler,
                security=security(cluster),
                timeout=cluster.connect_timeout_s,
                set_as_default=True,  # xgboost.dask looks for the default client
            )
        except (OSError, TimeoutError) as exc:
            log.warning(
                "cluster_unreachable", extra={"scheduler": cluster.scheduler, "error": str(exc)[:200]}
            )
            raise Refusal("cluster_unavailable", "the training cluster could not be reached") from None
        try:
            return self._run(client)
        finally:
            client.close(timeout=5)

    def _run(self, client: Client) -> TrainReport | None:
        task, staging = self.task, self.task.staging
        assert staging is not None and task.spec is not None
        plan = Plan(
            family=self.job.plan.family,
            params=dict(self.job.plan.params),
            rounds=self.job.plan.rounds,
            task=self.job.plan.task,
            base=(self.folder / self.job.plan.base).read_bytes() if self.job.plan.base else None,
            base_rounds=self.job.plan.base_rounds,
        )
        self.channel.stage("staging")
        parts = self._stage(client, staging.dataset_path)
        classes = is_classifier_task(plan.task)
        shares = _gather(client, [client.submit(partitions.admission, p, classes, pure=False) for p in parts])
        counts, sets, labels_seen, levels = _merged_admission(shares, task.kind)
        admission = Admission(
            counts=counts,  # type: ignore[arg-type]
            row_sets=evidence.write_bitmaps(self.folder, sets),  # type: ignore[arg-type]
            table_rows=evidence.table_rows(staging.dataset_path),
        )
        if not self.channel.admit(admission):
            return None

        label_type = pq.read_schema(staging.dataset_path).field(staging.label).type
        if not classes and not (pa.types.is_integer(label_type) or pa.types.is_floating(label_type)):
            raise Refusal("invalid_spec", f"label {staging.label!r} is not numeric")  # as encode_labels says
        class_values = list(np.unique(np.array(labels_seen))) if classes else None
        labels = Labels(
            np.zeros(0), np.zeros(0), [str(c) for c in class_values] if class_values is not None else []
        )
        params, out_task = FAMILY.final_params(plan, labels, task.limits.threads)
        rare = rows.rare_levels(levels, task.rare_level_rows)
        text = rows.levels(levels, rare)
        categories = {name: values.to_pylist() for name, values in category_lists(plan, text).items()}
        frames = {
            split: [
                client.submit(partitions.frame, p, split, categories, rare, class_values, pure=False)
                for p in parts
            ]
            for split in ("train", "eval")
        }
        rows_of = {split: [share["splits"][split]["rows"] for share in shares] for split in ("train", "eval")}
        history: dict = {}
        if task.kind == "train":
            booster, history = self._train(client, plan, params, labels, frames, rows_of)
            booster.save_model(str(self.folder / "model.json"))
            (self.folder / "params.json").write_text(json.dumps(params))  # as the family's export
        else:
            booster = xgb.Booster(model_file=bytearray(plan.base or b""))
            booster.set_param({"nthread": task.limits.threads})
        self.channel.stage("evaluating")
        return self._report(
            client, plan, params, out_task, labels, booster, history, frames, bool(categories)
        )

    def _stage(self, client: Client, path: str) -> list[Future]:
        """Stage the snapshot on the cluster in contiguous runs of rows, one per partition (by default
        one per cluster worker)."""
        rows_total = pq.read_metadata(path).num_rows
        workers = len(client.scheduler_info(n_workers=-1)["workers"])
        count = max(1, min(self.job.cluster.partitions or workers, rows_total))
        bounds = np.linspace(0, rows_total, count + 1).astype(int)
        staging = self.task.staging
        assert staging is not None
        return [
            client.submit(
                partitions.stage,
                path,
                int(start),
                int(stop),
                staging.partition_query,
                staging.params,
                staging.columns,
                staging.label,
                pure=False,
            )
            for start, stop in zip(bounds, bounds[1:])
        ]

    def _train(
        self, client: Client, plan: Plan, params: dict, labels: Labels, frames: dict, rows_of: dict
    ) -> tuple[xgb.Booster, dict]:
        exact = plan.base is not None  # a base model's splits need exact values, as on one machine
        matrices = {}
        for split in ("train", "eval"):
            kept = [f for f, n in zip(frames[split], rows_of[split]) if n]
            x = dd.from_delayed(
                [dask.delayed(itemgetter(0))(f) for f in kept],
                meta=client.submit(partitions.empty_frame, kept[0]).result(),
            )
            y = dd.from_delayed(
                [dask.delayed(partitions.labels_of)(f) for f in kept],
                meta=pd.Series(dtype="int64" if labels.classes else "float64"),
            )
            if exact:
                matrices[split] = dxgb.DaskDMatrix(client, x, y, enable_categorical=True)
            else:
                matrices[split] = dxgb.DaskQuantileDMatrix(
                    client,
                    x,
                    y,
                    max_bin=params["max_bin"],
                    ref=matrices.get("train"),
                    enable_categorical=True,
                )
        for name in self.names.values():
            Variable(name, client=client).set(None if name == self.names["progress"] else False)
        host = urlsplit(self.job.cluster.scheduler).hostname
        outcome: dict = {}

        def train() -> None:
            try:
                outcome["out"] = dxgb.train(
                    client,
                    params,
                    matrices["train"],
                    num_boost_round=plan.rounds,
                    evals=[(matrices["train"], "train"), (matrices["eval"], "eval")],
                    xgb_model=xgb.Booster(model_file=bytearray(plan.base)) if plan.base else None,
                    verbose_eval=False,
                    callbacks=[
                        partitions.ClusterProgress(
                            self.names["progress"], self.names["cancel"], plan.base_rounds
                        )
                    ],
                    coll_cfg=xgb.collective.Config(
                        timeout=self.job.cluster.collective_timeout_s, tracker_host_ip=host
                    ),
                )
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                outcome["error"] = exc

        self.channel.stage("training", 0, plan.rounds)
        at_start = _workers(client)
        worker = threading.Thread(target=train, name="cluster-train", daemon=True)
        worker.start()
        self._follow(client, worker, plan.rounds, at_start)
        if "error" in outcome:
            # A peer that left makes the others' collective fail, maybe before the scheduler says so.
            deadline = time.monotonic() + LOSS_NOTICE_S
            while time.monotonic() < deadline:
                if not at_start <= _workers(client):
                    raise Refusal("cluster_worker_lost", LOST_WORKER)
                time.sleep(POLL_S)
            raise outcome["error"]
        return outcome["out"]["booster"], outcome["out"]["history"]

    def _follow(self, client: Client, worker: threading.Thread, rounds: int, at_start: set[str]) -> None:
        """Forward progress while the cluster trains; stop on a lost worker or the parent's cancel."""
        progress = Variable(self.names["progress"], client=client)
        last_seen, checked = None, time.monotonic()
        while worker.is_alive():
            worker.join(POLL_S)
            if self.stopping.is_set():
                Variable(self.names["cancel"], client=client).set(True)
                worker.join(STOP_GRACE_S)
                raise SystemExit(0)
            now = progress.get(timeout=5)
            if now is not None and now != last_seen:
                last_seen = now
                self.channel.stage("training", min(int(now["done"]), rounds), rounds, now["latest"])
            if time.monotonic() - checked >= WORKERS_EVERY_S:
                checked = time.monotonic()
                if not at_start <= _workers(client):
                    Variable(self.names["cancel"], client=client).set(True)
                    raise Refusal("cluster_worker_lost", LOST_WORKER)

    def _report(
        self,
        client: Client,
        plan: Plan,
        params: dict,
        out_task: str,
        labels: Labels,
        booster: xgb.Booster,
        history: dict,
        frames: dict,
        categorical: bool,
    ) -> TrainReport:
        task = self.task
        total = booster.num_boosted_rounds()
        label_range = task.label_range if out_task == "regression" else None
        residual_clip = label_range[1] - label_range[0] if label_range else None
        asked = partitions.Asked(
            task=out_task,
            n_classes=len(labels.classes),
            label_range=label_range,
            residual_clip=residual_clip,
            base_rounds=plan.base_rounds,
            total_rounds=total,
            train=task.kind == "train",
            checkpoints=checkpoints(plan.base_rounds, total, task.release.curve)
            if task.release.curve
            else [],
            spreads={},
            structure=task.structure,
            leaves=task.structure or task.model_facts,
        )
        model = client.scatter(booster, broadcast=True)
        pairs = list(zip(frames["train"], frames["eval"]))
        if out_task == "regression" and task.structure:
            moments = _gather(
                client,
                [
                    client.submit(
                        partitions.moments, model, [t, e] if asked.train else [e], asked, pure=False
                    )
                    for t, e in pairs
                ],
            )
            asked.spreads = {
                key: partials.spread(partials.merge([m[key] for m in moments if key in m]))
                for key in ("trained", "base")
            }
        found = _gather(
            client, [client.submit(partitions.scores, model, t, e, asked, pure=False) for t, e in pairs]
        )
        score, stats = partials.finish(
            partials.merge([f["partial"] for f in found]), out_task, len(labels.classes)
        )
        trained_leaves = fewest_in_a_leaf(_leaf_totals(found, "trained_leaves"))
        structure = Structure()
        if task.structure:
            structure.trained_isolated = partials.isolated(_histogram(found, "trained_isolation"))
            if plan.base_rounds:
                structure.base_isolated = partials.isolated(_histogram(found, "base_isolation"))
            base_leaves = fewest_in_a_leaf(_leaf_totals(found, "base_leaves"))
            if task.kind == "train":
                structure.trained_smallest_leaf = trained_leaves
                structure.base_smallest_leaf = base_leaves if plan.base_rounds else None
            else:
                structure.base_smallest_leaf = base_leaves
        curve = None
        clip = scoring.loss_clip(out_task, residual_clip)
        if asked.checkpoints and clip is not None:
            sums = [float(sum(f["curve"][i] for f in found)) for i in range(len(asked.checkpoints))]
            curve = CurveStats(
                rounds=asked.checkpoints,
                loss_sums=sums,
                loss_clip=clip,
                metric="rmse" if out_task == "regression" else "log_loss",
            )
        facts = None
        if task.model_facts and task.kind == "train":
            facts = LeafFacts(
                **FAMILY.release_facts(params, total - plan.base_rounds, categorical, trained_leaves)
            )
        confusion = score.get("confusion")
        curve_report = None
        if history:
            metric = next(iter(history["eval"]))
            curve_report = CurveReport(
                metric=metric, train=list(history["train"][metric]), eval=list(history["eval"][metric])
            )
        return TrainReport(
            task=out_task,  # type: ignore[arg-type]
            metrics=score["metrics"],
            confusion=Confusion(labels=labels.classes, counts=confusion) if confusion is not None else None,
            history=curve_report,
            feature_importance={
                str(k): float(v)
                for k, v in (booster.get_score(importance_type="gain") if total else {}).items()
            },
            rounds=RoundsReport(base=plan.base_rounds, new=total - plan.base_rounds, total=total),
            model=facts,
            stats=EvalStats(**stats),
            curve=curve,
            structure=structure,
        )


def _workers(client: Client) -> set[str]:
    return set(client.scheduler_info(n_workers=-1)["workers"])


def _merged_admission(shares: list[dict], kind: str) -> tuple[dict, dict, list, dict[str, Counter]]:
    """The partitions' admission shares as one: counts per split (and class), the row sets, the labels
    seen, the rows per text level."""
    counts: dict[str, SplitCounts] = {}
    bitmaps: dict[str, BitMap] = {}
    labels: list = []
    levels: dict[str, Counter] = {}
    for split in ("train", "eval"):
        rows_ = sum(s["splits"][split]["rows"] for s in shares)
        classes = None
        if "classes" in shares[0]["splits"][split]:
            classes = Counter()
            for share in shares:
                classes.update(share["splits"][split]["classes"])
                labels.extend(share["splits"][split]["labels"])
        counts[split] = SplitCounts(rows=rows_, classes=dict(classes) if classes is not None else None)
        bitmaps[split] = BitMap.union(*[BitMap.deserialize(s["splits"][split]["row_ids"]) for s in shares])
    for share in shares:
        for name, found in share["levels"].items():
            levels.setdefault(name, Counter()).update(found)
    sets = {"evaluation": bitmaps["eval"]}
    if kind == "train":
        sets["training"] = bitmaps["train"]
        sets["admitted"] = bitmaps["train"] | bitmaps["eval"]
        return {"train": counts["train"], "eval": counts["eval"]}, sets, labels, levels
    return {"eval": counts["eval"]}, sets, labels, levels


def _histogram(found: list[dict], key: str) -> Counter:
    total: Counter = Counter()
    for f in found:
        total.update({int(k): v for k, v in f.get(key, {}).items()})
    return total


def _leaf_totals(found: list[dict], key: str) -> list[np.ndarray]:
    totals: list[np.ndarray] = []
    for f in found:
        for tree, counts in enumerate(f[key]):
            counts = np.asarray(counts, dtype=np.int64)
            while len(totals) <= tree:
                totals.append(np.zeros(0, dtype=np.int64))
            if len(counts) > len(totals[tree]):
                totals[tree] = np.pad(totals[tree], (0, len(counts) - len(totals[tree])))
            totals[tree][: len(counts)] += counts
    return totals


def run(job_dir: str, conn: Connection) -> None:
    """Entry point of a driver process (started like a worker, from the forkserver)."""
    serve(job_dir, conn, _drive)


def _drive(folder: Path, channel: Channel) -> None:
    job = DriverTask.model_validate_json((folder / "driver.json").read_text())
    driver = Driver(job, folder, channel)
    signal.signal(signal.SIGTERM, lambda *_: driver.stopping.set())
    try:
        report = driver.run()
    except KilledWorker:
        log.warning("cluster job %s lost a worker", folder.name)
        raise Refusal("cluster_worker_lost", LOST_WORKER) from None
    except (OSError, TimeoutError):
        log.exception("cluster job %s lost the cluster", folder.name)
        raise Refusal("cluster_unavailable", "the training cluster stopped answering") from None
    except SystemExit:
        return  # cancelled: the parent is not listening
    if report is not None:
        channel.send(report)
