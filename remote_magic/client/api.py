"""The Python client: everything the magics do, usable from a plain script.

Layers: a `requests.Session` that retries only idempotent requests (a POST is retried only with the same
Idempotency-Key, so a retry can never start a second job) and never a connection that could not be made
(a closed port fails at once; a long-poll rides out a restart by its own loop, job.py), one method per
endpoint with typed results,
and `Job` handles (job.py) that wait (long-poll), report progress, cancel on Ctrl-C and return a
`TrainResult`.
A submission whose queue on the server is full waits for a place as the server's Retry-After says.

Why it is long: one method per endpoint of the HTTP API, each a few lines; the layers stay together so
that the transport's retry rules and the calls that rely on them can be read side by side.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import requests
from pydantic import BaseModel
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from urllib3.util.retry import Retry

from ..contract.automation_wire import RegisterRequest
from ..contract.codes import Refusal
from ..contract.payload import package_model, scan
from ..contract.specs import with_model_classes
from ..contract.types import kind_of
from ..contract.wire import (
    BudgetReport,
    CostRequest,
    DatasetInfo,
    DatasetSpec,
    DescribeResult,
    FederatedEvaluateRequest,
    FederatedSketch,
    FederatedSketchRequest,
    FederatedStepRequest,
    FederatedSums,
    JobList,
    JobResult,
    JobStatus,
    MockData,
    ModelReleaseStatus,
    ReleaseOptions,
    Whoami,
)
from ..display.budget import Budget
from ..display.cost import Cost
from ..display.description import Description
from ..display.model import RemoteModel
from ..display.progress import script_bar
from ..display.result import TrainResult
from ..display.tables import Datasets
from .connection import check_url, client_cert_file, hub_token, tls_problem, tls_verify, unreachable
from .errors import Busy, ConnectionProblem, RemoteError, error_for
from .job import Job
from .registry_api import RegistryCalls, register_request
from .spec_input import as_spec

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_TIMEOUT = 30.0
DEFAULT_QUEUE_WAIT = 600.0
RETRY_AFTER_DEFAULT = 5.0
RETRY_AFTER_RANGE = (0.5, 60.0)


class _TokenAuth(AuthBase):
    """Adds the bearer token to each request; its repr never shows the token."""

    def __init__(self, token: str):
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "<bearer token>"


def _retrying_session() -> requests.Session:
    """Retries a 502/503/504 and a connection dropped mid-answer (a GET's), with backoff; not a connection
    that could not be made: nothing listens there, so the caller hears it at once rather than after five
    backed-off tries (9 s), and a connect timeout has already waited its whole timeout. A long-poll rides
    out a restart by its own reconnect loop (job.py)."""
    session = requests.Session()
    retry = Retry(
        total=5,
        connect=0,
        read=3,
        other=0,  # a TLS failure will not pass on a retry
        backoff_factor=0.3,
        status_forcelist=(502, 503, 504),
        allowed_methods=frozenset({"GET", "HEAD", "OPTIONS"}),
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = "remote-magic-client"
    return session


def _check_literal_types(model: object) -> None:
    """Refuse here, before anything is sent, a whole-number parameter given as text or a decimal
    (`n_estimators="20"`), and a keyword XGBoost would not use (`n_estimator=50`), by the XGBoost
    family's own rules, as the server and the dry run do."""
    get_params = getattr(model, "get_params", None)
    if not callable(get_params):
        return
    from ..families.xgboost.bounds import check_whole_numbers  # the families' base loads NumPy, Arrow

    estimator = model.steps[-1][1] if isinstance(getattr(model, "steps", None), list) else model
    try:
        check_whole_numbers(get_params())
        if getattr(estimator, "kwargs", None):  # the model is XGBoost's: loading XGBoost costs nothing
            from ..families.xgboost.known import check_estimator

            check_estimator(estimator)
    except Refusal as refusal:
        raise error_for(refusal.code, refusal.message) from None


def _options(release: ReleaseOptions | dict | None) -> ReleaseOptions:
    if isinstance(release, ReleaseOptions):
        return release
    return ReleaseOptions.model_validate(release or {})


class Client(RegistryCalls):
    """A connection to one remote-magic server, authenticated by a token.

    The token is `token`, else $REMOTE_MAGIC_TOKEN, else, in a JupyterHub kernel, $JUPYTERHUB_API_TOKEN
    if the server says it accepts Hub tokens. HTTPS certificates are verified (against `ca_bundle` or
    $REMOTE_MAGIC_CA_BUNDLE if given); `client_cert` (or $REMOTE_MAGIC_CLIENT_CERT) is a PEM file with
    a certificate and key for servers that require one; plain http:// to a host that is not loopback is
    refused unless `insecure`."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        queue_wait: float = DEFAULT_QUEUE_WAIT,
        *,
        ca_bundle: str | None = None,
        client_cert: str | None = None,
        insecure: bool = False,
    ):
        url = url or os.environ.get("REMOTE_MAGIC_URL")
        if not url:
            raise ConnectionProblem("no server URL: pass one or set REMOTE_MAGIC_URL")
        self.url = check_url(url, insecure)
        self.timeout = timeout
        self._session = _retrying_session()
        # Passed with every request: requests lets $REQUESTS_CA_BUNDLE override a session's `verify`.
        self._verify = tls_verify(ca_bundle)
        self._session.cert = client_cert_file(client_cert)
        token = token or os.environ.get("REMOTE_MAGIC_TOKEN") or self._hub_token()
        if not token:
            raise ConnectionProblem("no token: pass one or set REMOTE_MAGIC_TOKEN")
        self.queue_wait = queue_wait
        self._session.auth = _TokenAuth(token)
        self._infos: dict[str, DatasetInfo] = {}  # per dataset, for the result's notes and the classes

    def _hub_token(self) -> str | None:
        token = hub_token()
        return token if token and "jupyterhub" in self.health().get("auth", []) else None

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def close(self) -> None:
        self._session.close()

    def _post_json(self, path: str, body: BaseModel, **kwargs: object) -> requests.Response:
        """POST a wire model as JSON (fields left unset are left out)."""
        data = body.model_dump_json(exclude_none=True)
        return self._request("POST", path, data=data, headers={"Content-Type": "application/json"}, **kwargs)

    def _request(self, method: str, path: str, **kwargs: object) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        kwargs.setdefault("verify", self._verify)
        try:
            response = self._session.request(method, f"{self.url}/v1{path}", **kwargs)  # type: ignore[arg-type]
        except requests.exceptions.SSLError as exc:
            raise tls_problem(self.url, exc) from None
        except requests.ConnectionError as exc:
            raise unreachable(self.url, exc, self._session.cert is not None) from None
        except requests.Timeout as exc:
            raise ConnectionProblem(f"{self.url} did not answer in time") from exc
        if response.status_code >= 400:
            raise self._error(response)
        return response

    @staticmethod
    def _error(response: requests.Response) -> RemoteError:
        try:
            body = response.json()["error"]
            code, message = str(body["code"]), str(body["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "http_error", f"the server answered HTTP {response.status_code}"
        error = error_for(code, message, status=response.status_code)
        if isinstance(error, Busy):
            error.retry_after = _seconds(response.headers.get("Retry-After"))
        return error

    # endpoints
    def health(self) -> dict:
        return self._request("GET", "/health").json()

    def whoami(self) -> Whoami:
        return Whoami.model_validate(self._request("GET", "/whoami").json())

    def datasets(self) -> Datasets:
        """The datasets you may use (a list of `DatasetInfo`); printed, a table whose noisy row counts
        (mode dp) say so."""
        return Datasets(DatasetInfo.model_validate(d) for d in self._request("GET", "/datasets").json())

    def dataset(self, name: str) -> DatasetInfo:
        return DatasetInfo.model_validate(self._request("GET", f"/datasets/{name}").json())

    def _dataset_info(self, name: str) -> DatasetInfo:
        """The dataset's catalog entry, asked once per client (its bounds, mode and declared levels)."""
        if name not in self._infos:
            self._infos[name] = self.dataset(name)
        return self._infos[name]

    def mock(self, name: str) -> pd.DataFrame:
        """The dataset's mock data: a small sample with the real schema and no real values (for dry runs
        and for trying code locally); `.attrs` holds the column roles and where the rows came from."""
        from .dryrun import mock_frame

        return mock_frame(MockData.model_validate(self._request("GET", f"/datasets/{name}/mock").json()))

    def submit(
        self,
        model: object,
        spec: DatasetSpec | dict,
        kind: str = "train",
        idempotency_key: str | None = None,
        release: ReleaseOptions | dict | None = None,
        register: str | dict | RegisterRequest | None = None,
        base_model: str | None = None,
        on_wait: Callable[[float, float], None] | None = None,
        queue_wait: float | None = None,
    ) -> Job:
        """Queue a job and return its handle. `release` asks for extras (confusion matrix, an eval
        learning curve, a feature-importance ranking); on a dataset in mode dp each costs budget.

        `register` names the model the trained result becomes the next version of (a name, or a dict with
        `alias` and a `when` condition); `base_model` (`churn@3`, `@latest`, `@ALIAS`) continues, or
        evaluates, a registered version on the server: `model` then only brings parameters, or is None.

        When this user's queue on the server is full (429), wait for a place as the server's Retry-After
        says, for at most `queue_wait` seconds (default: the client's), then raise `Busy`;
        `on_wait(seconds_until_retry, seconds_waited)` is called before each wait (a progress line).
        Ctrl-C stops the wait: nothing was queued. Every attempt carries the same Idempotency-Key, so a
        retry never queues twice."""
        limit = self.queue_wait if queue_wait is None else queue_wait
        spec = as_spec(spec)
        if model is not None:
            _check_literal_types(model)
            spec = with_model_classes(model, spec, self._dataset_info(spec.dataset))
        options = _options(release)
        key = idempotency_key or uuid.uuid4().hex
        payload = package_model(model) if model is not None else None
        files = {"model": ("model.pkl", payload, "application/octet-stream")} if payload is not None else None
        data = {
            "spec": spec.model_dump_json(exclude_none=True),
            "kind": kind,
            "release": options.model_dump_json(),
        }
        request = register_request(register)
        if request is not None:
            data["register_as"] = request.model_dump_json(exclude_none=True)
        if base_model is not None:
            data["base_model"] = base_model
        started = time.monotonic()
        while True:
            try:
                response = self._post_job(files, data, key)
                break
            except Busy as busy:
                waited = time.monotonic() - started
                if waited >= limit:
                    if limit > 0:
                        busy.message = (
                            f"{busy.message} (waited {waited:.0f} s for a place in the queue; "
                            "Client(queue_wait=...) or %config RemoteMagic.queue_wait waits longer)"
                        )
                    raise
                delay = min(_jittered(busy.retry_after), limit - waited)
                if on_wait is not None:
                    on_wait(delay, waited)
                time.sleep(delay)
        status = JobStatus.model_validate(response.json())
        notes = self._server_values_notes(payload, spec, kind) if base_model is None else []
        return Job(self, status, notes=notes)

    def _server_values_notes(self, payload: bytes | None, spec: DatasetSpec, kind: str) -> list[str]:
        """The result's line about a parameter the server requires and the model leaves unset (the
        server's own rule, `xgboost_bounds.server_values`, on the server's published bounds). Asked once
        the server has accepted the job, so that its own refusals, not this, answer a bad model."""
        if payload is None or kind != "train":
            return []
        try:
            report = scan(payload)
        except Refusal:
            return []  # a payload the server holds for its owner's approval
        if (
            report.params is None
            or report.rounds is None
            or report.params.get("min_child_weight") is not None
        ):
            return []
        bounds = self._dataset_info(spec.dataset).bounds
        if bounds is None:
            return []
        from ..families.xgboost import bounds as xgboost_bounds  # the families' base loads NumPy, Arrow

        plan = xgboost_bounds.plan_of_scan(report.estimator, report.params, report.rounds)
        note = xgboost_bounds.server_values_note(xgboost_bounds.server_values(plan, bounds))
        return [] if note is None else [note]

    def _post_job(self, files: dict, data: dict, key: str) -> requests.Response:
        """POST a job; a connection that fails is tried again, twice, with the same key."""
        for attempt in range(2):
            try:
                return self._request(
                    "POST", "/jobs", files=files, data=data, headers={"Idempotency-Key": key}
                )
            except ConnectionProblem:
                time.sleep(0.5 * (attempt + 1))
        return self._request("POST", "/jobs", files=files, data=data, headers={"Idempotency-Key": key})

    def train(
        self,
        model: object,
        spec: DatasetSpec | dict,
        release: ReleaseOptions | dict | None = None,
        register: str | dict | RegisterRequest | None = None,
        base_model: str | None = None,
        progress: bool | None = None,
        **wait: object,
    ) -> TrainResult:
        """Submit a training job and wait for its result (see `submit` for `register` and `base_model`).
        A job longer than a second shows a progress bar on stderr when run in a terminal (`progress`
        None); `progress=False` or REMOTE_MAGIC_PROGRESS=off shows none, as a log or CI does not."""
        job = self.submit(model, spec, "train", release=release, register=register, base_model=base_model)
        return _waited(job, progress, wait)

    def evaluate(
        self,
        model: object,
        spec: DatasetSpec | dict,
        release: ReleaseOptions | dict | None = None,
        model_ref: str | None = None,
        progress: bool | None = None,
        **wait: object,
    ) -> TrainResult:
        """Score a fitted model on the spec's evaluation rows, without training; with `model_ref`
        (`churn@3`), score that registered version instead (pass `model=None`). `progress` as `train`."""
        job = self.submit(model, spec, "evaluate", release=release, base_model=model_ref)
        return _waited(job, progress, wait)

    def cost(
        self,
        model: object,
        spec: DatasetSpec | dict,
        kind: str = "train",
        release: ReleaseOptions | dict | None = None,
    ) -> Cost:
        """What the job would cost in privacy budget, and how wide its intervals should be, before
        anything is spent: for a train job in mode dp, the DP trainer's part and the evaluation's, and
        the noise the trainer would add per leaf for this model (worked out here, with the label's public
        range or classes from the catalog: the server prices a job without its model), with warnings for a
        model whose leaves would be mostly noise or whose run would be long (`trainer_noise.shape_warnings`,
        from the catalog's released row count, never the exact one). A model the server would refuse
        before reading a row (the dry run's checks, `model_checks.check_model`) is refused here too."""
        spec = as_spec(spec)
        body = CostRequest(spec=spec, kind=kind, release=_options(release))  # type: ignore[arg-type]
        response = self._post_json("/cost", body)
        estimate = Cost.model_validate(response.json())
        if model is not None:  # a job the server would refuse at once is not priced
            from .model_checks import check_model  # the families load NumPy, Arrow, XGBoost

            info = self._dataset_info(spec.dataset)
            try:
                check_model(model, with_model_classes(model, spec, info), info, kind)
            except Refusal as refused:
                raise error_for(refused.code, refused.message) from None
        if estimate.rho_train > 0:
            if model is None:
                why = "the noise per leaf depends on the model's n_estimators: pass the model to see it"
            else:
                from .trainer_noise import expected_training, shape_warnings  # the trainer loads XGBoost

                info = self._dataset_info(spec.dataset)
                classes = info.column_levels.get(spec.label, spec.classes)
                public = (info.label_ranges.get(spec.label), len(classes) if classes else None)
                try:
                    estimate.training, why = expected_training(
                        model, estimate.rho_train, estimate.delta, *public
                    )
                except Refusal as refused:  # the server's refusal of this model, before anything is spent
                    raise error_for(refused.code, refused.message) from None
                if estimate.training is not None:
                    rows = info.rows - (estimate.assumed_eval_rows or 0) if info.rows else None
                    estimate.warnings = shape_warnings(model, estimate.training, rows, *public)
            estimate.notes.extend([why] if why else [])
        return estimate

    def federated_sketch(self, body: FederatedSketchRequest, timeout: float = 600.0) -> FederatedSketch:
        """Before a federated training's first batch: this server's DP sketch of its training rows over
        public grids, charged to your budget here (its share of the training's rho)."""
        response = self._post_json("/federated/sketch", body, timeout=timeout)
        return FederatedSketch.model_validate(response.json())

    def federated_sums(self, step: FederatedStepRequest, timeout: float = 600.0) -> FederatedSums:
        """One batch of a federated training: this server's own noisy per-leaf sums of its training rows,
        charged to your budget here (`federated.federated_train` asks every server at once)."""
        response = self._post_json("/federated/sums", step, timeout=timeout)
        return FederatedSums.model_validate(response.json())

    def federated_evaluate(self, body: FederatedEvaluateRequest, timeout: float = 600.0) -> TrainResult:
        """A federated training's end here: the final model scored on this server's evaluation rows from
        the training's session, charged to your budget as an evaluate job; the session ends."""
        response = self._post_json("/federated/evaluate", body, timeout=timeout)
        return TrainResult(JobResult.model_validate(response.json()))

    def end_federated(self, training: str, timeout: float = 10.0) -> None:
        """Tell the server a federated training is over: it drops the training's session (its staged
        rows and margins) now rather than when it times out."""
        self._request("DELETE", f"/federated/sessions/{training}", timeout=timeout)

    def budget(self, dataset: str | None = None) -> Budget:
        """Your privacy budget on each mode-dp dataset (or on `dataset` alone, as `%remote_budget
        DATASET`): spent, left, and the jobs that spent it. A dataset without one is a KeyError that
        says which have one."""
        budget = Budget(BudgetReport.model_validate(self._request("GET", "/budget").json()))
        if dataset is not None:
            budget.report.datasets = [budget[dataset]]
        return budget

    def jobs(self, limit: int = 100, state: str | None = None) -> list[JobStatus]:
        """Your jobs, newest first; `state` keeps only jobs in that state."""
        params: dict = {"limit": limit} if state is None else {"limit": limit, "state": state}
        return JobList.model_validate(self._request("GET", "/jobs", params=params).json()).jobs

    def job(self, job_id: str) -> Job:
        return Job(self, self.status(job_id))

    def status(
        self,
        job_id: str,
        wait: float = 0,
        since: int | None = None,
        final: bool = False,
        result: bool = False,
    ) -> JobStatus:
        """A job's status; with `wait`, block (long-poll) until its version passes `since` (with `final`:
        until it ends) or time is up. With `result`, a job that succeeded comes with its result
        (`JobStatus.result`), so waiting for a result takes one round trip, not two."""
        params: dict = {"wait": wait}
        if since is not None:
            params["since"] = since
        if final:
            params["final"] = "true"
        if result:
            params["result"] = "true"
        response = self._request("GET", f"/jobs/{job_id}", params=params, timeout=self.timeout + wait)
        return JobStatus.model_validate(response.json())

    def result(self, job_id: str) -> JobResult:
        """The released result of a finished job, as the wire model (`Job.result` wraps it)."""
        return JobResult.model_validate(self._request("GET", f"/jobs/{job_id}/result").json())

    def cancel(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(self._request("POST", f"/jobs/{job_id}/cancel").json())

    def describe(self, spec: DatasetSpec | dict) -> Description:
        """Disclosure-checked aggregates of the spec's admitted rows, before any training."""
        spec = as_spec(spec)
        response = self._post_json("/describe", spec, timeout=max(self.timeout, 300.0))
        return Description(DescribeResult.model_validate(response.json()), spec)

    def model_status(self, job_id: str) -> ModelReleaseStatus:
        """Whether a job's trained model may be downloaded, and why not if not."""
        return ModelReleaseStatus.model_validate(self._request("GET", f"/jobs/{job_id}/model/status").json())

    def download_model(self, job_id: str) -> bytes:
        """A job's model as XGBoost JSON bytes: a DP model at once, any other once the data owner
        approved it; raises DisclosureRefused (saying which, and how to ask) until then."""
        return self._request("GET", f"/jobs/{job_id}/model").content

    def load_model(self, job_id: str) -> RemoteModel:
        """A finished job's model, loaded: `.estimator` (XGBClassifier / XGBRegressor) for `predict_proba`
        on your own rows, `.booster`, and what it cost. A model the DP trainer trained is a DP release
        and comes at once, at no further cost; any other only once the data owner approved it."""
        data = self.download_model(job_id)
        result = self.result(job_id)
        part = result.summary.train or result.summary.eval
        classes = [c.label for c in part.classes] if part is not None and part.classes else None
        left = self.rho_left(result.dataset) if result.training is not None else None
        label = result.ran_with.label if result.ran_with is not None else None
        label_kind = self._label_kind(result.dataset, label) if classes else None
        derive = result.ran_with.derive if result.ran_with is not None else None
        return RemoteModel.load(
            data, job_id, result.dataset, result.training, left, classes, label_kind=label_kind, derive=derive
        )

    def _label_kind(self, dataset: str, label: str | None) -> str | None:
        """The kind (number, boolean, text) of the label a model was trained on, from the catalog's
        schema; None where the catalog does not show it (then `predict` reads the classes' text)."""
        if label is None:
            return None
        try:
            columns = {c.name: c.dtype for c in self._dataset_info(dataset).columns}
        except RemoteError as exc:  # a version shared with a user the dataset is not granted to
            if exc.code == "unknown_dataset":
                return None
            raise
        dtype = columns.get(label)
        return kind_of(dtype) if dtype is not None else None

    def rho_left(self, dataset: str) -> float | None:
        """Your zCDP budget left on a dataset now; None where it has none (mode rules)."""
        report = BudgetReport.model_validate(self._request("GET", "/budget").json())
        return next((d.rho_remaining for d in report.datasets if d.dataset == dataset), None)


def _waited(job: Job, progress: bool | None, wait: dict) -> TrainResult:
    """The job's result, with the bar `script_bar` picks while it runs (unless `on_progress` is given)."""
    bar = None if "on_progress" in wait else script_bar(progress)
    if bar is None:
        return job.result(**wait)  # type: ignore[arg-type]
    try:
        return job.result(
            on_progress=bar,
            progress_after=bar.delay,
            **{"on_notice": bar.notice, **wait},  # type: ignore[arg-type]
        )
    finally:
        bar.close()


def _seconds(header: str | None) -> float | None:
    """A Retry-After header in seconds (the delay form; the date form is not used by the server)."""
    try:
        return float(header) if header is not None else None
    except ValueError:
        return None


def _jittered(retry_after: float | None) -> float:
    """The server's Retry-After within sane bounds, spread by +-20% so many waiting clients do not
    all come back in the same instant."""
    low, high = RETRY_AFTER_RANGE
    seconds = min(max(retry_after if retry_after is not None else RETRY_AFTER_DEFAULT, low), high)
    return seconds * random.uniform(0.8, 1.2)  # noqa: S311 - spreading retries, not a secret
