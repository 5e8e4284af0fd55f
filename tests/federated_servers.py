"""Three data owners' servers on loopback for the federated tests: each its own config, token and table.

One synthetic table (the demo's generator) is split three ways, unevenly and with different class
balance; each owner serves its part as `visits` in mode dp with declared column ranges and levels.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from remote_magic_server.demo import synthetic_table
from tests.serverproc import ServerProcess

OWNERS = ("a", "b", "c")
# P(owner | label): owner a holds most rows and most positives, c few rows and few positives.
SHARES = {1: (0.6, 0.25, 0.15), 0: (0.45, 0.35, 0.2)}
RANGES = {
    "age": (18, 90),
    "income": (0, 150000),
    "bmi": (10, 50),
    "smoker": (0, 1),
    "visits": (0, 15),
    **{f"noise_{i}": (-4, 4) for i in range(4)},
}
LEVELS = {"region": ["north", "south", "east", "west"]}


def split_table(rows: int, seed: int = 7) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The whole table and its three parts."""
    table = synthetic_table(rows=rows)
    rng = np.random.default_rng(seed)
    owner = np.empty(len(table), dtype=object)
    for label, shares in SHARES.items():
        at = np.flatnonzero(table["label"].to_numpy() == label)
        owner[at] = rng.choice(OWNERS, size=len(at), p=shares)
    return table, {name: table[owner == name].reset_index(drop=True) for name in OWNERS}


def config_for(
    folder: Path, table: pd.DataFrame, privacy: str = "dp", extra: str = "", declared: bool = True
) -> Path:
    """One owner's server config serving `table` as `visits`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "visits.parquet"
    table.to_parquet(path, index=False)
    lines = [
        "[server]",
        f'data_dir = "{folder / "data"}"',
        "workers = 1",
        "",
        "[policy]",
        "dp_rho_cap = 50.0",
        extra,
        "",
        "[datasets.visits]",
        f'path = "{path}"',
        'id_column = "id"',
        'label_columns = ["label"]',
        f'privacy = "{privacy}"',
        'column_levels.label = ["0", "1"]',  # the label's classes: mode dp trains on declared ones only
    ]
    if declared:
        lines += [f"column_ranges.{k} = [{lo}, {hi}]" for k, (lo, hi) in RANGES.items()]
        lines += [f"column_levels.{k} = {v!r}".replace("'", '"') for k, v in LEVELS.items()]
    config = folder / "server.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


@contextmanager
def owners(
    root: Path, parts: dict[str, pd.DataFrame], **per_owner: dict
) -> Iterator[dict[str, ServerProcess]]:
    """A started server per part (keyword `a={"privacy": "rules"}` changes one owner's config)."""
    with ExitStack() as stack:
        servers = {}
        for name, table in parts.items():
            config = config_for(root / name, table, **per_owner.get(name, {}))
            server = ServerProcess(config, root / f"{name}.log")
            server.issue_tokens({"alice": ["visits"], "bob": ["visits"]})
            server.start()
            stack.callback(server.stop)
            servers[name] = server
        yield servers
