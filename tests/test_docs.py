"""The documentation: every Python example in README.md and docs/ runs, the site builds with ``mkdocs build
--strict``, and every public name has a docstring.

One helper (:func:`python_blocks`) finds the examples; each page's blocks run in order in one namespace, as a
reader would paste them, in an empty working folder.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pathlib
import pkgutil
import re
import subprocess
import sys
import textwrap

import pytest

import sdekit

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md"] + sorted(DOCS.rglob("*.md"))
FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    """The ```python fenced blocks of a Markdown page, dedented (blocks inside admonitions are indented)."""
    return [textwrap.dedent(m.group("body")) for m in FENCE.finditer(text)]


def _rel(page: pathlib.Path) -> str:
    return page.relative_to(ROOT).as_posix()


PAGES_WITH_CODE = [p for p in PAGES if python_blocks(p.read_text())]


def test_pages_with_examples():
    """The pages that must carry runnable code do (theory pages end with a numerical check of their formula)."""
    with_code = {_rel(p) for p in PAGES_WITH_CODE}
    required = {"README.md", "docs/getting-started.md"} | {_rel(p) for p in (DOCS / "theory").glob("*.md")}
    required |= {_rel(p) for p in (DOCS / "how-to").glob("*.md")}
    assert required <= with_code, f"pages without a python example: {sorted(required - with_code)}"


def test_fence_parser():
    text = "a\n```python\nx = 1\n```\n\n!!! note\n    ```python\n    y = 2\n    ```\n```bash\nls\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\n"]


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=_rel)
def test_examples_run(page, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for i, block in enumerate(python_blocks(page.read_text())):
        exec(compile(block, f"{_rel(page)}[block {i}]", "exec"), namespace)


# ---- the site -------------------------------------------------------------------------------------------------

def test_mkdocs_build_strict(tmp_path):
    """The site builds with no warning: no broken link or anchor, no unresolved reference, no docstring that
    griffe cannot parse. Needs the ``docs`` extra (``make docs``; the ``test`` extra includes it)."""
    importlib.import_module("mkdocs")  # the test extra includes the docs extra: a missing mkdocs fails, not skips
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    page = (tmp_path / "site" / "benchmarks" / "index.html").read_text()
    assert "bench_samplers" in page and "img/benchmarks/bench_samplers.png" in page
    # every results file has its own page, linked from the index
    for path in (ROOT / "benchmarks/results").rglob("*.json"):
        slug = path.relative_to(ROOT / "benchmarks/results").with_suffix("").as_posix().replace("/", "-")
        assert (tmp_path / "site" / "benchmarks" / slug / "index.html").is_file(), slug
        assert f'href="{slug}/"' in page, slug


def test_benchmarks_page_reads_the_json():
    """The generated page shows the JSON's numbers (to 4 significant digits), not numbers typed by hand."""
    import json

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        hooks = importlib.import_module("mkdocs_hooks")
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    markdown, images = hooks.render_page()
    data = json.loads((ROOT / "benchmarks/results/bench_samplers.json").read_text())
    assert f"{data['targets']['b_nfe10']['ratio_mean']:.4g}" in markdown
    likelihood = json.loads((ROOT / "benchmarks/results/bench_likelihood.json").read_text())
    assert f"{likelihood['rtol_sweep'][0]['rmse_nats']:.4g}" in markdown
    for path in (ROOT / "benchmarks/results").rglob("*.json"):
        assert f"## {path.relative_to(ROOT / 'benchmarks/results').with_suffix('').as_posix()}" in markdown
    assert all(png.startswith(b"\x89PNG") for png in images.values()) and images
    # the numbers are on each file's own page, the index only names and links them
    index, pages, _ = hooks.render_pages()
    assert f"{data['targets']['b_nfe10']['ratio_mean']:.4g}" in pages["benchmarks/bench_samplers.md"]
    assert len(pages) == len(list((ROOT / "benchmarks/results").rglob("*.json")))
    assert all(f"]({name})" in index for name in pages)


# ---- docstrings -------------------------------------------------------------------------------------------------

def _own_doc(obj) -> str | None:
    if inspect.isclass(obj):
        return vars(obj).get("__doc__")
    return getattr(obj, "__doc__", None)


@pytest.mark.parametrize("name", sdekit.__all__)
def test_public_name_has_docstring(name):
    obj = getattr(sdekit, name)
    doc = _own_doc(obj)
    assert doc and doc.strip(), f"sdekit.{name} has no docstring of its own"


def test_every_public_name_is_in_the_reference_table():
    table = (DOCS / "reference" / "sdekit.md").read_text()
    missing = [n for n in sdekit.__all__ if f"[`sdekit.{n}`]" not in table]
    assert not missing, f"docs/reference/sdekit.md does not list {missing}"


REFERENCED = sorted({m.group(1) for p in (DOCS / "reference").glob("*.md")
                     for m in re.finditer(r"^::: ([\w.]+)", p.read_text(), re.M)})


def _module_name(ref: str) -> str:
    return "sdekit.kernels" + ref[len("kernels"):] if ref.split(".")[0] == "kernels" else ref


def test_reference_covers_the_public_modules():
    """Every module users import has an API page (the CLI's modules and private helpers are not API)."""
    referenced = {_module_name(r) for r in REFERENCED}
    public = {m.name for m in pkgutil.walk_packages(sdekit.__path__, "sdekit.")
              if not any(part.startswith("_") for part in m.name.split("."))
              and not m.name.startswith("sdekit.cli") and not m.name.startswith("sdekit.testing.checks_")}
    public |= {"sdekit.kernels", "sdekit.kernels.combine", "sdekit.kernels.attention"}
    missing = public - referenced - {"sdekit.testing.diffusion_checks"}
    assert not missing, f"modules without an API page (docs/reference/*.md): {sorted(missing)}"


def _public_members(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items() if not n.startswith("_") and (inspect.isfunction(v) or
                 inspect.isclass(v)) and getattr(v, "__module__", None) == module.__name__]
    for name in names:
        value = getattr(module, name)
        if inspect.isfunction(value) or inspect.isclass(value):
            yield name, value


@pytest.mark.parametrize("ref", REFERENCED)
def test_documented_members_have_docstrings(ref):
    """Every public function and class of a module on an API page, and every public method of those classes
    defined there, has a docstring: mkdocstrings would render it with none, silently."""
    module = importlib.import_module(_module_name(ref))
    missing = []
    for name, value in _public_members(module):
        if not (_own_doc(value) or "").strip():
            missing.append(name)
        if inspect.isclass(value) and value.__module__ == module.__name__:
            for attr, member in vars(value).items():
                if attr.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
                    continue
                if any(attr in vars(base) for base in value.__mro__[1:]):
                    continue  # an override: the base class documents it
                if not (member.__doc__ or "").strip():
                    missing.append(f"{name}.{attr}")
    assert not missing, f"{module.__name__}: no docstring for {missing}"
