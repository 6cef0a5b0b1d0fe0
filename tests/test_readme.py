"""Every python code block of README.md, docs/solvers.md and docs/samplers.md runs."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("page", ["README.md", "docs/solvers.md", "docs/samplers.md"])
def test_examples_run(page):
    text = (ROOT / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, f"{page} has no python example"
    for block in blocks:
        exec(compile(block, page, "exec"), {})
