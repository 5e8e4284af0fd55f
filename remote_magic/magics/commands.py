"""The IPython magics. Thin: parse arguments, call the client API, hand the result to a display object.

`RemoteMagic` is also the configuration (`%config RemoteMagic`), in the manner of JupySQL: every trait
documents itself, and REMOTE_MAGIC_URL / REMOTE_MAGIC_TOKEN are the defaults.

Why it is long: each magic's arguments are declared beside it (IPython's `magic_arguments`, which `%magic?`
help reads); each method itself stays a few lines that call the client.

Why the imports sit in the methods: `%load_ext remote_magic` must cost nothing (tests/test_lazy_imports.py);
the client, the wire schema (pydantic), pandas, matplotlib and XGBoost load when a magic first needs them.
"""

from __future__ import annotations

import getpass
import os
import shlex
import sys
import traceback
from functools import partial
from typing import TYPE_CHECKING, get_args

from IPython.core.error import StdinNotImplementedError, UsageError
from IPython.core.magic import Magics, cell_magic, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Float, Unicode, default
from traitlets.config import Configurable

from ..client.errors import JobInterrupted, JobNotCancelled, RemoteMagicError
from .cellmodel import bound_models, bound_values, foreign_models, pick_model
from .targets import job_target
from .usage import usage_errors

if TYPE_CHECKING:
    from ..client.api import Client
    from ..client.job import Job
    from ..contract.wire import DatasetSpec, Whoami
    from ..display.budget import Budget
    from ..display.description import Description
    from ..display.lineage import LineageView
    from ..display.model import RemoteModel
    from ..display.result import TrainResult
    from ..display.tables import Table

CANCEL_WAIT_S = 3.0


def _parse(magic, line: str):
    """Parse magic flags with POSIX shell quoting, so --where "region = 'north'" arrives unquoted."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"cannot parse the arguments: {exc}") from None
    try:
        return magic.parser.parse_args(words)
    except UsageError as exc:
        raise UsageError(_hinted(str(exc), words, magic.parser)) from None


FILTER_FLAGS = ("--where", "-w", "--eval-where")


def _hinted(message: str, words: list[str], parser) -> str:
    """argparse's "unrecognized arguments: >= 18", with what was meant: an unquoted filter split into
    words (quote it), or a dataset written as a positional word (the magics take it by --dataset)."""
    head, _, rest = message.partition("unrecognized arguments: ")
    extra = rest.split()
    if head or not extra or extra[0] not in words:
        return message
    at = words.index(extra[0])
    if at >= 2 and words[at - 2] in FILTER_FLAGS:
        taken = [words[at - 1]]
        for word in words[at:]:
            if word.startswith("-") or word not in extra:
                break
            taken.append(word)
        return f'{message}; quote the filter: {words[at - 2]} "{" ".join(taken)}"'
    if at == 0 and "--dataset" in parser._option_string_actions and not extra[0].startswith("-"):
        return f'{message}; the dataset goes in --dataset {extra[0]} (or -d), or in the spec\'s "dataset"'
    return message


def _spec_arguments(func):
    """The dataset-spec flags shared by %%remote_train and %%remote_evaluate."""
    for decorator in reversed(
        [
            argument("--dataset", "-d", help="dataset name on the server"),
            argument("--label", "-l", help="label column"),
            argument(
                "--features", "-f", help="comma-separated feature columns (default: all but label and id)"
            ),
            argument(
                "--where", "-w", help="filter admitting rows, e.g. \"age >= 18 AND region IN ('north')\""
            ),
            argument(
                "--eval-fraction", type=float, help="hold out this fraction of admitted rows for evaluation"
            ),
            argument(
                "--eval-where", help="evaluate on admitted rows matching this filter, train on the rest"
            ),
            argument("--seed", type=int, help="seed of the hashed train/eval split (default 0)"),
            argument(
                "--classes",
                help="comma-separated classes of the label, where the data owner declared none (default: "
                "a fitted classifier's own classes_); only rows of these classes are admitted",
            ),
            argument(
                "--model",
                "-m",
                help="variable holding the model (default: the one model the cell itself binds)",
            ),
            argument(
                "--spec", help="a variable holding a spec dict (or DatasetSpec) for the fields no flag sets"
            ),
            argument(
                "-o", "--output", help="store the result (or, with --no-wait, the job) in this variable"
            ),
            argument("--no-wait", action="store_true", help="return a job handle at once instead of waiting"),
            argument(
                "--dry-run",
                action="store_true",
                help="check the spec and fit the model here on the dataset's mock rows, and show what the "
                "job would cost; send nothing",
            ),
            argument("--confusion", action="store_true", help="also release the confusion matrix"),
            argument("--curve", type=int, default=0, help="also release an eval learning curve at K points"),
            argument(
                "--importance",
                type=int,
                default=0,
                help="also release the top K features (permutation importance)",
            ),
        ]
    ):
        func = decorator(func)
    return func


def _registry_arguments(func):
    """--register and its companions, shared by %%remote_train and %%remote_recipe."""
    for decorator in reversed(
        [
            argument("--register", help="register the trained model as the next version of this name"),
            argument("--alias", help="with --register: point this alias (e.g. champion) at the new version"),
            argument(
                "--if-better",
                help="with --register: only if eval METRIC improves on the alias's (or the latest) version "
                "by at least DELTA, written METRIC:DELTA, e.g. auc:0.002",
            ),
        ]
    ):
        func = decorator(func)
    return func


CELL_FILE = "<cell>"


def _cell_traceback(error: BaseException) -> list[str]:
    """The traceback of an error raised by a magic's cell, from the cell's own frame on: what the cell
    did, not the magic machinery that ran it."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != CELL_FILE:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb)).rstrip("\n").split("\n")


SPEC_FLAGS = ("dataset", "label", "where", "features", "eval_fraction", "eval_where", "seed", "classes")


def _spec_source(args) -> str | None:
    """Where a job's spec came from when a variable was used: its name, and the flags set over it."""
    if args.spec is None:
        return None
    flags = [f"--{name.replace('_', '-')}" for name in SPEC_FLAGS if getattr(args, name, None) is not None]
    over = f"; flags over it: {', '.join(flags)}" if flags else ""
    return f"`{args.spec}` (named by --spec){over}"


def _say(line: str) -> None:
    """A line for the user while a cell waits without a progress bar (REMOTE_MAGIC_PROGRESS=off)."""
    print(line, file=sys.stderr)


def _charge_said(job: Job) -> str:
    """What a cancelled job cost, as the server said it with its end (mode dp); empty otherwise. Waits
    a moment for the end, since a running job stops a little after it is told to."""
    try:
        status = job.status if job.done else job.wait(timeout=CANCEL_WAIT_S)
    except (TimeoutError, KeyboardInterrupt, RemoteMagicError):
        return ""
    message = status.error.message if status.error is not None else ""
    return f"; {message.split('; ', 1)[1]}" if "; " in message else ""


@magics_class
class RemoteMagic(Magics, Configurable):
    """Train and evaluate XGBoost models on a remote-magic server from notebook cells."""

    url = Unicode(help="Server URL; default: $REMOTE_MAGIC_URL.").tag(config=True)
    token_env = Unicode(
        "REMOTE_MAGIC_TOKEN",
        help="Environment variable that holds the token (the token itself is never stored).",
    ).tag(config=True)
    timeout = Float(0.0, help="Seconds to wait for a job before giving up; 0 waits as long as it takes.").tag(
        config=True
    )
    progress = Bool(
        help="Show a progress bar while waiting; default: on unless REMOTE_MAGIC_PROGRESS=off."
    ).tag(config=True)
    progress_delay = Float(
        1.0, help="Seconds before the progress bar appears, so quick jobs stay quiet."
    ).tag(config=True)
    queue_wait = Float(
        600.0,
        help="Seconds a submission waits for a place when your queue on the server is full; 0 fails at once.",
    ).tag(config=True)

    @default("url")
    def _default_url(self) -> str:
        return os.environ.get("REMOTE_MAGIC_URL", "")

    @default("progress")
    def _default_progress(self) -> bool:
        from ..display.progress import progress_enabled

        return progress_enabled()

    def __init__(self, shell):
        Configurable.__init__(self, config=shell.config)
        Magics.__init__(self, shell=shell)
        shell.configurables.append(self)
        self.connections: dict[str, Client] = {}
        self.current: str | None = None
        self.last_job: Job | None = None

    # connection
    def _token(self, env: str) -> str | None:
        """The token from `env`; None in a JupyterHub kernel (the client then offers the Hub's token)."""
        from ..client.connection import hub_token

        token = os.environ.get(env)
        if token:
            return token
        if hub_token():
            return None
        if sys.stdin is not None and hasattr(sys.stdin, "isatty") and not os.environ.get("CI"):
            try:
                return getpass.getpass(f"Token for the remote-magic server (or set {env}): ")
            except (EOFError, OSError, StdinNotImplementedError):
                pass  # no prompt possible here (papermill, nbclient, a pipe)
        raise UsageError(f"no token: set the environment variable {env} before connecting")

    @property
    def client(self) -> Client:
        if self.current is None:
            self._connect(self.url, self.token_env, "default")
        return self.connections[self.current]  # type: ignore[index]

    def _connect(self, url: str, token_env: str, name: str, **tls: object) -> Whoami:
        """Open a connection; it becomes current only once the server answered whoami, so a bad token or
        URL leaves the working connection in place."""
        if not url:
            raise UsageError("no server URL: %remote_connect URL, or set REMOTE_MAGIC_URL")
        from ..client.api import Client

        client = Client(url, self._token(token_env), timeout=30.0, **tls)  # type: ignore[arg-type]
        try:
            who = client.whoami()
        except BaseException:
            client.close()
            raise
        self.connections[name] = client
        self.current = name
        return who

    @magic_arguments()
    @argument("url", nargs="?", help="server URL (default: the `url` trait or $REMOTE_MAGIC_URL)")
    @argument("--token-env", help="environment variable that holds the token (default: REMOTE_MAGIC_TOKEN)")
    @argument("--name", "-n", default=None, help="name of this connection; switch back with --name only")
    @argument("--ca-bundle", help="CA file for the server's certificate (default: $REMOTE_MAGIC_CA_BUNDLE)")
    @argument("--client-cert", help="PEM file with a client certificate and key, if the server asks for one")
    @argument("--insecure", action="store_true", help="allow plain http:// to a host that is not loopback")
    @line_magic
    @usage_errors
    def remote_connect(self, line: str) -> None:
        """Connect to a remote-magic server, or switch between named connections.

        In a JupyterHub kernel without $REMOTE_MAGIC_TOKEN, the Hub's token is used if the server
        accepts it."""
        args = _parse(self.remote_connect, line)
        name = args.name or "default"
        if args.url is None and args.name in self.connections:
            who = self.connections[args.name].whoami()
            self.current = args.name
        else:
            who = self._connect(
                args.url or self.url,
                args.token_env or self.token_env,
                name,
                ca_bundle=args.ca_bundle,
                client_cert=args.client_cert,
                insecure=args.insecure,
            )
        print(
            f"Connected to {self.client.url} as {who.user} ({len(who.datasets)} dataset(s)) [{self.current}]"
        )

    @magic_arguments()
    @argument("name", nargs="?", help="a dataset: show its columns (NAME@N: those of version N)")
    @argument("--versions", action="store_true", help="show the dataset's versions instead of its columns")
    @line_magic
    @usage_errors
    def remote_datasets(self, line: str) -> Table:
        """List the datasets this token may use, one dataset's columns and roles, or its versions."""
        from ..display.tables import columns_table, datasets_table, versions_table

        args = _parse(self.remote_datasets, line)
        if args.name is None:
            if args.versions:
                raise UsageError("--versions needs a dataset name")
            return datasets_table(self.client.datasets())
        dataset = self.client.dataset(args.name)
        return versions_table(dataset) if args.versions else columns_table(dataset)

    @magic_arguments()
    @argument("dataset", nargs="?", help="only this dataset")
    @line_magic
    @usage_errors
    def remote_budget(self, line: str) -> Budget:
        """Your privacy budget on each mode-dp dataset: the cap, what is spent and left, and every charge
        with the job that made it (a failed or cancelled job is charged once its rows were admitted)."""
        args = _parse(self.remote_budget, line)
        try:
            return self.client.budget(args.dataset)
        except KeyError as missing:
            raise UsageError(missing.args[0]) from None

    # jobs
    def _spec(self, args) -> DatasetSpec:
        """The spec of the flags, over the variable `--spec VAR` names: never one picked up by its name."""
        from .args import spec_from_args

        return spec_from_args(args, self._spec_variable(args))

    def _spec_variable(self, args) -> object:
        if args.spec is None:
            return None
        if args.spec not in self.shell.user_ns:
            raise UsageError(
                f"there is no variable {args.spec!r}; --spec names a variable holding a spec dict"
            )
        return self.shell.user_ns[args.spec]

    def _run_cell(self, cell: str) -> tuple[dict[str, object], dict[str, object]]:
        """Run the cell; return the models it bound (compared with the namespace before it), and the
        models of libraries no family knows that it bound. An error in the cell shows as the cell's own
        traceback, without the frames of the magic around it."""
        before = dict(self.shell.user_ns)
        code = compile(cell, CELL_FILE, "exec")
        try:
            with self.shell.builtin_trap:
                exec(code, self.shell.user_global_ns, self.shell.user_ns)  # noqa: S102 - the user's own cell
        except Exception as error:
            error._render_traceback_ = partial(_cell_traceback, error)  # type: ignore[attr-defined]
            raise
        bound = bound_values(before, self.shell.user_ns, self.shell.transform_cell(cell))
        return bound_models(bound), foreign_models(bound)

    def _model(self, args, bound: dict[str, object], foreign: dict[str, object]) -> object:
        """The variable --model names (bound in the cell or not), else the one model the cell bound."""
        if args.model is None:
            return pick_model(bound, foreign)
        if args.model not in self.shell.user_ns:
            said = f"there is no variable {args.model!r}"
            if bound:
                named = ", ".join(sorted(bound))
                raise UsageError(f"{said}; the cell bound {named}: --model {sorted(bound)[0]}, or no --model")
            raise UsageError(f"{said}; name the model with --model VAR")
        return self.shell.user_ns[args.model]

    def _model_or_base(
        self, args, bound: dict[str, object], base: str | None, foreign: dict[str, object]
    ) -> object:
        """The model to send; with a registered version (`base`), the cell's model brings only parameters
        and may be absent, and with --model-ref none is sent."""
        if getattr(args, "model_ref", None):
            return None
        if base is not None and args.model is None and not bound:
            return None
        return self._model(args, bound, foreign)

    def _run(self, kind: str, line: str, cell: str, magic) -> object:
        """Run a train or evaluate cell; a progress line it showed leaves no empty output (tidy.py)."""
        from ..display.tidy import tidy_outputs

        with tidy_outputs(self.progress):
            return self._run_cell_magic(kind, line, cell, magic)

    def _run_cell_magic(self, kind: str, line: str, cell: str, magic) -> object:
        from ..client.registry_api import register_request
        from ..contract.wire import ReleaseOptions, curve_problem
        from .args import bounded

        args = _parse(magic, line)
        bounded("--curve", args.curve, ReleaseOptions, "curve", " (0: no curve)")
        bounded("--importance", args.importance, ReleaseOptions, "importance", " (0: none)")
        refused = curve_problem(kind, args.curve, "--curve")
        if refused:
            raise UsageError(refused)
        release = ReleaseOptions(confusion=args.confusion, curve=args.curve, importance=args.importance)
        bound, foreign = self._run_cell(cell)
        spec = self._spec(args)
        base = getattr(args, "base_model", None) or getattr(args, "model_ref", None)
        if args.dry_run and base is not None:
            raise UsageError("--dry-run checks a model from the cell; it cannot use a registered version")
        model = self._model_or_base(args, bound, base, foreign)
        if args.dry_run:
            from ..client.dryrun import dry_run

            client = self.client
            report = dry_run(model, spec, client.dataset(spec.dataset), client.mock(spec.dataset), kind)
            report.cost = client.cost(model, spec, kind, release)
            if args.output:
                self.shell.user_ns[args.output] = report
            return report
        register = getattr(args, "register", None)
        if register is None and (getattr(args, "alias", None) or getattr(args, "if_better", None)):
            raise UsageError("--alias and --if-better go with --register NAME")
        try:
            request = register_request(
                register, getattr(args, "alias", None), getattr(args, "if_better", None)
            )
        except ValueError as exc:
            raise UsageError(f"--register/--alias/--if-better: {exc}") from None
        job = self._submit(model, spec, kind, release, request, base)
        self.last_job = job
        if args.no_wait:
            if args.output:
                self.shell.user_ns[args.output] = job
            return job
        result = self._wait(job)
        result.spec_source = _spec_source(args)
        if args.output:
            self.shell.user_ns[args.output] = result
        return result

    def _submit(self, model: object, spec, kind: str, release, register, base) -> Job:
        """Submit, waiting (with a progress line) while the server's queue for this user is full."""
        from ..display.progress import QueueWait

        waiting = QueueWait() if self.progress else None
        try:
            return self.client.submit(
                model,
                spec,
                kind,
                release=release,
                register=register,
                base_model=base,
                on_wait=waiting,
                queue_wait=self.queue_wait,
            )
        except KeyboardInterrupt:
            raise JobInterrupted("while waiting for a queue slot; nothing was submitted.") from None
        finally:
            if waiting is not None:
                waiting.close()

    def _wait(self, job: Job):
        from ..display.progress import ProgressBar

        bar = ProgressBar(delay=self.progress_delay) if self.progress else None
        try:
            return job.result(
                timeout=self.timeout or None,
                on_progress=bar,
                progress_after=self.progress_delay,
                on_notice=bar.notice if bar is not None else _say,
            )
        except JobNotCancelled as exc:
            raise JobNotCancelled(exc.job_id, f"%remote_cancel {exc.job_id}") from None
        except KeyboardInterrupt:
            raise JobInterrupted(f"remote job {job.id} was cancelled{_charge_said(job)}.") from None
        finally:
            if bar is not None:
                bar.close()

    @magic_arguments()
    @_spec_arguments
    @_registry_arguments
    @argument(
        "--base-model", help="continue a registered version on the server, e.g. churn@3 or churn@latest"
    )
    @argument(
        "--datasets",
        help="train one DP model over several servers: NAME:DATASET pairs of %%remote_connect --name "
        "connections, e.g. a:visits,b:visits,c:visits",
    )
    @argument("--batch-size", type=int, default=10, help="with --datasets: trees per round trip (default 10)")
    @cell_magic
    @usage_errors
    def remote_train(self, line: str, cell: str) -> object:
        """Run the cell, then train its model remotely on the spec's admitted rows.

        The cell runs locally first; the model the cell itself binds is sent (or the variable named by
        --model): an XGBClassifier or XGBRegressor (fitted or not, a fitted one continues training), a
        Booster, a Pipeline ending in one, or {'params': {...}, 'num_boost_round': N, 'booster':
        Booster | None}. A cell that binds no model, or several, says so. Only aggregate results come
        back. With --datasets, one DP model is trained over several data owners' servers (mode dp
        everywhere): each server noises its own sums and charges its own budget.
        """
        if not cell.strip():  # `empty_cell_body` lets an empty cell reach here
            raise UsageError(
                "%%remote_train has nothing in its cell: put the code that makes the model under its first "
                "line"
            )
        args = _parse(self.remote_train, line)
        if args.datasets is not None:
            return self._federated(args, cell)
        return self._run("train", line, cell, self.remote_train)

    def _federated(self, args, cell: str) -> object:
        """`%%remote_train --datasets a:visits,b:visits`: the client's federated training, over the named
        connections."""
        from ..client.federated import federated_train
        from ..contract.wire import FederatedSettings
        from .args import bounded

        bounded("--batch-size", args.batch_size, FederatedSettings, "batch_size")
        owners = {}
        for pair in filter(None, (p.strip() for p in args.datasets.split(","))):
            name, _, dataset = pair.partition(":")
            if not dataset:
                raise UsageError(f"--datasets takes NAME:DATASET pairs, not {pair!r}")
            if name not in self.connections:
                known = ", ".join(sorted(self.connections)) or "none yet"
                raise UsageError(
                    f"no connection named {name!r} (%remote_connect URL --name {name}); known: {known}"
                )
            owners[name] = (self.connections[name], dataset)
        for flag in ("register", "base_model", "dry_run", "no_wait"):
            if getattr(args, flag, None):
                raise UsageError(f"--{flag.replace('_', '-')} does not go with --datasets")
        bound, foreign = self._run_cell(cell)
        model = self._model(args, bound, foreign)
        if args.dataset is None and owners:
            args.dataset = next(iter(owners.values()))[1]  # each connection's own name replaces it
        spec = self._spec(args)
        result = federated_train(model, spec, owners, batch_size=args.batch_size)
        if args.output:
            self.shell.user_ns[args.output] = result
        return result

    @magic_arguments()
    @_spec_arguments
    @argument("--model-ref", help="score this registered version instead of the cell's model, e.g. churn@3")
    @line_cell_magic
    @usage_errors
    def remote_evaluate(self, line: str, cell: str | None = None) -> object:
        """Run the cell, then score its fitted model (or `--model-ref` a registered version) on the spec's
        evaluation rows (no training). As a line (`%remote_evaluate --model-ref churn@3`, or `--model
        VAR`) there is no cell to run: a registered version needs none."""
        if cell is not None and not cell.strip():  # `empty_cell_body` lets an empty cell reach here
            raise UsageError(
                "%%remote_evaluate has nothing in its cell: put the code that fits the model under its "
                "first line, or use the line magic (one %) with --model VAR or --model-ref NAME@N"
            )
        return self._run("evaluate", line, cell or "", self.remote_evaluate)

    @magic_arguments()
    @argument("--limit", "-n", type=int, default=20, help="show at most this many jobs (default 20)")
    @argument("--state", "-s", help="only jobs in this state (queued, running, succeeded, failed, ...)")
    @line_magic
    @usage_errors
    def remote_jobs(self, line: str) -> Table:
        """Your jobs on the current server, newest first: model, rounds, dataset, state, progress."""
        from ..contract.wire import JobListQuery, JobState
        from ..display.tables import jobs_table
        from .args import bounded

        args = _parse(self.remote_jobs, line)
        bounded("--limit", args.limit, JobListQuery, "limit")
        states = get_args(JobState)
        if args.state is not None and args.state not in states:
            raise UsageError(f"--state: invalid choice: {args.state!r} (choose from {', '.join(states)})")
        return jobs_table(self.client.jobs(limit=args.limit, state=args.state))

    def _last_id(self) -> str | None:
        return self.last_job.id if self.last_job else None

    @line_magic
    @usage_errors
    def remote_job(self, line: str) -> TrainResult | Job:
        """`%remote_job [JOB]`: the full result of a finished job, or its progress while it runs (JOB: a
        job id or a job or result variable; default: the last job). A cancelled job shows its state:
        raising `JobCancelled` stopped a papermill run that only looked at it."""
        job = self.client.job(job_target(line, self.shell.user_ns, self._last_id(), "remote_job"))
        return job.result() if job.done and job.status.state != "cancelled" else job

    @magic_arguments()
    @argument(
        "job",
        nargs="?",
        help="a job id, a variable holding a job or its result, or a registered version NAME@VERSION "
        "(default: the last job)",
    )
    @argument(
        "--as",
        dest="name",
        help="put the model in this variable (predict_proba, predict, .estimator, .booster)",
    )
    @argument("--booster", action="store_true", help="with --as: put the xgboost.Booster there instead")
    @line_magic
    @usage_errors
    def remote_model(self, line: str) -> RemoteModel | None:
        """Bring a trained model home: a model the server's DP trainer trained (a DP release) at once and
        at no further cost; any other once the data owner approved it. Says what it cost."""
        args = _parse(self.remote_model, line)
        if args.booster and not args.name:
            raise UsageError("--booster needs --as NAME")
        if args.name is not None and not args.name.isidentifier():
            raise UsageError(f"--as {args.name!r} is not a variable name")
        target = job_target(args.job, self.shell.user_ns, self._last_id(), "remote_model", versions=True)
        model = self.client.load_version(target) if "@" in target else self.client.load_model(target)
        if args.name is None:
            return model
        self.shell.user_ns[args.name] = model.booster if args.booster else model
        print(f"{args.name}: {model.summary()}")
        return None

    @line_magic
    @usage_errors
    def remote_cancel(self, line: str) -> None:
        """`%remote_cancel JOB` (an id, or a job or result variable): cancel a queued or running job,
        and say its final state (or that it is still cancelling after a few seconds)."""
        if not line.strip():
            raise UsageError("usage: %remote_cancel JOB_ID (or a job or result variable)")
        job_id = job_target(line, self.shell.user_ns, None, "remote_cancel")
        job = self.client.job(job_id)
        job.cancel()
        try:
            state = job.wait(timeout=CANCEL_WAIT_S).state
            print(f"Job {job_id}: {state}{_charge_said(job)}")
        except TimeoutError:
            print(f"Job {job_id}: cancelling; %remote_job {job_id} shows when it has stopped")

    @magic_arguments()
    @argument("--dataset", "-d", help="dataset name on the server")
    @argument("--label", "-l", help="label column")
    @argument("--features", "-f", help="comma-separated columns to describe (default: all features)")
    @argument("--where", "-w", help="filter admitting rows, as for %%remote_train")
    @argument(
        "--classes",
        help="comma-separated classes of the label to count, where the data owner declared none (mode dp "
        "counts no others)",
    )
    @argument("--spec", help="a variable holding a spec dict (or DatasetSpec) for the fields no flag sets")
    @argument("-o", "--output", help="store the description in this variable")
    @line_magic
    @usage_errors
    def remote_describe(self, line: str) -> Description:
        """Disclosure-checked aggregates of a spec's admitted rows, before any training.

        Row count, class balance, missing values per column, histograms (every bin holds at least the
        server's minimum count; outer bins are open) and category frequencies (small ones folded into
        'other'). On DP datasets the counts are noisy and the remaining privacy budget is shown.
        """
        args = _parse(self.remote_describe, line)
        args.eval_fraction = args.eval_where = args.seed = None
        spec = self._spec(args).model_copy(update={"eval": None})
        description = self.client.describe(spec)
        if args.output:
            self.shell.user_ns[args.output] = description
        return description

    # the registry and recipes
    @line_magic
    def remote_models(self, line: str) -> Table:
        """`%remote_models [NAME]`: registered versions you may use, with origin, data and main metric."""
        from ..display.lineage import models_table

        return models_table(self.client.models(line.strip() or None))

    @line_magic
    def remote_lineage(self, line: str) -> LineageView:
        """`%remote_lineage churn@5`: the version and its ancestors, drawn as a small graph."""
        ref = line.strip()
        if not ref:
            raise UsageError("usage: %remote_lineage NAME@VERSION (or NAME@latest, NAME@ALIAS)")
        return self.client.lineage(ref)

    @magic_arguments()
    @argument(
        "action", nargs="?", default="list", help="save (with a cell), list, run, pause, resume, delete"
    )
    @argument("name", nargs="?", help="the recipe's name")
    @argument("--kind", choices=("train", "evaluate"), default="train", help="what each run does")
    @argument("--on-new-data", action="store_true", help="run on each new version of the spec's dataset")
    @argument("--on-new-model", help="run when this model gets a new version or an alias moves")
    @argument("--every", help="run this often, e.g. 1d or 6h")
    @argument("--base-model", help="start each run from this registered version, e.g. churn@champion")
    @_registry_arguments
    @_spec_arguments
    @line_cell_magic
    def remote_recipe(self, line: str, cell: str | None = None) -> object:
        """Save a cell as a recipe that runs when its data or models change, or manage recipes.

        `%%remote_recipe save NAME --on-new-data --register churn --alias champion --if-better auc:0.002`
        with the spec flags of %%remote_train: the cell runs here once, and its model and spec are saved
        on the server. Without a cell: `%remote_recipe` lists, `%remote_recipe run|pause|resume|delete NAME`.
        """
        from ..client.registry_api import register_request
        from ..display.lineage import recipes_table

        args = _parse(self.remote_recipe, line)
        if cell is not None:
            if args.action != "save" or not args.name:
                raise UsageError("with a cell: %%remote_recipe save NAME [triggers] [spec flags]")
            bound, foreign = self._run_cell(cell)
            if args.kind == "evaluate" and args.base_model:
                model = None  # an evaluation recipe scores the registered version itself
            else:
                model = self._model_or_base(args, bound, args.base_model, foreign)
            try:
                request = register_request(args.register, args.alias, args.if_better)
            except ValueError as exc:
                raise UsageError(f"--register/--alias/--if-better: {exc}") from None
            recipe = self.client.save_recipe(
                args.name,
                self._spec(args),
                model,
                kind=args.kind,
                base_model=args.base_model,
                on_new_data=args.on_new_data,
                on_new_model=args.on_new_model,
                every=args.every,
                register=request,
            )
            return recipes_table([recipe])
        if args.action == "list":
            return recipes_table(self.client.recipes())
        if not args.name or args.action not in ("run", "pause", "resume", "delete"):
            raise UsageError("usage: %remote_recipe [list] | run|pause|resume|delete NAME")
        if args.action == "run":
            return self.client.run_recipe(args.name)
        if args.action == "delete":
            self.client.delete_recipe(args.name)
            return f"recipe {args.name} deleted"
        action = self.client.pause_recipe if args.action == "pause" else self.client.resume_recipe
        return recipes_table([action(args.name)])
