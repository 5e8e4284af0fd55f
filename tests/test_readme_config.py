"""The server configs a data owner copies out of the README and the docs load as they are: every key is one
the server knows (the config is strict), every value has the right type."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from remote_magic_server.config.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = [
    (doc.name, i, block)
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for i, block in enumerate(re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S))
    if "[datasets." in block or "[server]" in block or "[policy]" in block
]


def test_the_readme_has_config_blocks_to_check():
    assert sum(1 for name, _, _ in BLOCKS if name == "README.md") >= 2


@pytest.mark.parametrize(("doc", "index", "block"), BLOCKS, ids=[f"{d}-{i}" for d, i, _ in BLOCKS])
def test_a_documented_config_loads(tmp_path, doc, index, block):
    config = tmp_path / "server.toml"
    config.write_text(block)
    settings = load_settings(config)
    for name in re.findall(r"^\[datasets\.(\w+)\]", block, re.M):
        assert name in settings.datasets, (doc, index, name)
