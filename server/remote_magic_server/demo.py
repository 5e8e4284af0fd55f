"""Demo datasets, generated deterministically on first use, and the headless quickstart run.

Three tables, each with an id column that is never exposed: a synthetic binary-classification table
with numeric and categorical features, missing values and a real signal; scikit-learn's breast-cancer
table (real data); scikit-learn's diabetes table (regression).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from .config.settings import DatasetConfig, ServerSection, Settings, WebhooksSection

SEED = 20261127
SYNTHETIC_ROWS = 50_000
MOCK_ROWS = 200


def default_demo_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "remote-magic" / "demo"


def synthetic_table(rows: int = SYNTHETIC_ROWS, seed: int = SEED) -> pd.DataFrame:
    """A binary outcome driven by age, income, bmi, region and smoking, plus pure-noise columns."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, rows)
    income = np.round(rng.lognormal(10.3, 0.5, rows), 2)
    bmi = np.round(rng.normal(27, 5, rows), 1)
    region = rng.choice(["north", "south", "east", "west"], rows, p=[0.3, 0.3, 0.25, 0.15])
    smoker = rng.random(rows) < 0.22
    visits = rng.poisson(3, rows)
    noise = rng.normal(size=(rows, 4))
    region_effect = pd.Series(region).map({"north": 0.0, "south": 0.6, "east": -0.5, "west": 1.2}).to_numpy()
    logit = (
        -1.0
        + 0.07 * (age - 50)
        - 1.0 * (np.log(income) - 10.3)
        + 0.14 * (bmi - 27)
        + 1.6 * smoker
        + 0.25 * (visits - 3)
        + region_effect
    )
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    frame = pd.DataFrame(
        {
            "id": np.arange(1, rows + 1, dtype=np.int64),
            "age": age.astype(float),
            "income": income,
            "bmi": bmi,
            "region": region,
            "smoker": smoker.astype(np.int8),
            "visits": visits.astype(np.int32),
            **{f"noise_{i}": noise[:, i] for i in range(noise.shape[1])},
            "label": label,
        }
    )
    for col, rate in (("income", 0.05), ("bmi", 0.03), ("age", 0.01)):
        frame.loc[rng.random(rows) < rate, col] = np.nan
    return frame


def _snake(name: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()


def breast_cancer_table() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.rename(columns=_snake)
    frame.insert(0, "id", np.arange(1, len(frame) + 1, dtype=np.int64))
    return frame.rename(columns={"target": "malignant"}).assign(malignant=lambda f: 1 - f["malignant"])


def diabetes_table() -> pd.DataFrame:
    from sklearn.datasets import load_diabetes

    data = load_diabetes(as_frame=True)
    frame = data.frame.rename(columns={"target": "progression"})
    frame.insert(0, "id", np.arange(1, len(frame) + 1, dtype=np.int64))
    return frame


DEMO_DATASETS = {
    "synthetic": (synthetic_table, "label", "50,000 synthetic patients; binary outcome with a real signal"),
    "breast_cancer": (
        breast_cancer_table,
        "malignant",
        "Wisconsin breast cancer (scikit-learn); 1 = malignant; mode rules (too small for DP)",
    ),
    "diabetes": (
        diabetes_table,
        "progression",
        "Diabetes progression after one year (scikit-learn); regression; mode rules (too small for DP); "
        "evaluate on 0.3 of it (--eval-fraction 0.3): the default 0.2 is under 100 rows",
    ),
}


# The data owner's clip range of each regression label, for its DP metrics (diabetes: 25 to 346).
LABEL_RANGES = {"diabetes": {"progression": (0.0, 400.0)}}
# The data owner's classes of each classifier's label: public, so a mode-dp job's classes say nothing of
# the rows (docs/privacy.md, "A classifier's classes").
LABEL_CLASSES = {"synthetic": {"label": ["0", "1"]}, "breast_cancer": {"malignant": ["0", "1"]}}
# The data owner's public levels of each text feature: the DP trainer's categories at no cost, and a
# filter's literal that is none of them is refused before anything is charged.
FEATURE_LEVELS = {"synthetic": {"region": ["east", "north", "south", "west"]}}
# Each dataset's privacy mode: the two small scikit-learn tables (569 and 442 rows) are too small for
# differentially private metrics worth reading, so their owner serves them in mode rules.
DEMO_PRIVACY = {"synthetic": "dp", "breast_cancer": "rules", "diabetes": "rules"}


def synthetic_mock() -> pd.DataFrame:
    """Published mock rows for the synthetic table: the same generator with another seed, so a dry run's
    filter (say `region IN ('north', 'south')`) admits rows as it would on the hidden table."""
    return synthetic_table(rows=MOCK_ROWS, seed=SEED + 1).drop(columns="id")


# Datasets whose owner publishes mock rows (the others get rows synthesised from the column types).
DEMO_MOCKS = {"synthetic": synthetic_mock}


def _write_once(path: Path, make: Callable[[], pd.DataFrame]) -> Path:
    """Write `make()` to `path` (Parquet, or CSV by suffix) unless it is there already."""
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        frame = make()
        if path.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
        tmp.replace(path)
    return path


def ensure_demo_data(data_dir: Path) -> dict[str, Path]:
    """Write the demo tables as Parquet under data_dir/datasets (and their mock rows as CSV), once."""
    folder = data_dir / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    for name, make_mock in DEMO_MOCKS.items():
        _write_once(folder / f"{name}-mock.csv", make_mock)
    return {
        name: _write_once(folder / f"{name}.parquet", make) for name, (make, _, _) in DEMO_DATASETS.items()
    }


def demo_mock_path(dataset_path: Path) -> Path | None:
    """The published mock rows beside a demo table, if it has any."""
    name = dataset_path.stem
    return dataset_path.with_name(f"{name}-mock.csv") if name in DEMO_MOCKS else None


def demo_settings(data_dir: Path, host: str = "127.0.0.1", port: int = 8765, workers: int = 0) -> Settings:
    paths = ensure_demo_data(data_dir)
    datasets = {
        name: DatasetConfig(
            path=paths[name],
            description=desc,
            id_column="id",
            label_columns=[label],
            label_ranges=LABEL_RANGES.get(name, {}),
            column_levels={**LABEL_CLASSES.get(name, {}), **FEATURE_LEVELS.get(name, {})},
            mock_path=demo_mock_path(paths[name]),
            privacy=DEMO_PRIVACY[name],
        )
        for name, (_, label, desc) in DEMO_DATASETS.items()
    }
    settings = Settings(
        server=ServerSection(host=host, port=port, data_dir=data_dir, workers=workers),
        datasets=datasets,
        # The examples' webhook receiver listens on a free loopback port (examples/06-automation.ipynb).
        webhooks=WebhooksSection(allow=["http://127.0.0.1:*"]),
    )
    settings._demo = True
    return settings


_PORTS_GIVEN: set[int] = set()


def _ephemeral_low() -> int:
    """Where the kernel's range for outgoing connections' local ports starts (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def first_free_port(host: str, start: int, tries: int = 100) -> int:
    """`start`, or the next port after it that `host` can bind now: what `serve --demo` listens on when
    it is given no port (the README: "on 127.0.0.1:8765, or the next free port"), so that the URL and
    token it prints are the ones of the server it starts. The probe binds as uvicorn does, with
    SO_REUSEADDR: a port whose last connections linger in TIME_WAIT (a demo restarted after a crash) is
    free to uvicorn, and a plain bind's refusal moved the demo to the next port, away from the notebooks
    that wait for it to come back; a port another server listens on is still taken."""
    import socket

    for port in range(start, start + tries):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port on {host} from {start} to {start + tries - 1}: give one with --port")


def free_port() -> int:
    """A loopback port free now, for a demo or a test server.

    Chosen at random below the kernel's ephemeral range, never from it: every outgoing connection takes
    its local port from that range, so a port the kernel handed out there could be taken by some client
    between choosing it and binding it, or while its server restarts. Not the same port twice in one
    process."""
    import random
    import socket

    low = _ephemeral_low()
    if low > 11000:
        pick = random.SystemRandom()  # a test's random.seed must not make two processes pick alike
        for _ in range(200):
            port = pick.randrange(10000, low)
            if port in _PORTS_GIVEN:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _PORTS_GIVEN.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
