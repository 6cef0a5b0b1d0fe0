"""MkDocs hook: the Benchmarks pages, generated at build time from ``benchmarks/results/**/*.json``.

The pages are never written by hand, so the numbers in the docs are the numbers in the JSON. The Benchmarks page
lists every result file with its plot and links to the file's own page (``benchmarks/<name>/``, not in the
navigation), whose tables are read off the file (scalars as key/value tables, lists of records and dicts of records
as tables, deeper nesting as sub-sections), and the files that hold an error-vs-NFE sweep get a plot drawn here
with matplotlib. Nothing is rounded except for display (4 significant digits).
"""

from __future__ import annotations

import io
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = "benchmarks.md"
MAX_ROWS = 80  # longer tables are cut, with a line saying how many rows the JSON holds

INTRO = """# Benchmarks

This page is generated when the site is built, from the JSON files in `benchmarks/results/` (the hook is
`scripts/mkdocs_hooks.py`). Each section names its file and the script that writes it; the numbers are the
file's, shown to 4 significant digits. Speed results are ratios against a reference measured in the same run
on a shared machine (see each file's `machine` and `timing` entries); the discussion of each benchmark is in the
user guide ([solvers](solvers.md), [samplers](samplers.md), [likelihoods](likelihood.md),
[networks](networks.md), [testing](testing.md), [kernels](kernels.md)).
"""


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "–"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _scalar(value) -> bool:
    return value is None or isinstance(value, (bool, int, float, str)) or (
        isinstance(value, list) and len(value) <= 8 and all(_scalar(v) and not isinstance(v, list) for v in value))


def _table(rows: list[dict], index: str | None = None) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [k for k, v in row.items() if _scalar(v) and k not in columns]
    header = ([index] if index else []) + columns
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows[:MAX_ROWS]:
        cells = ([_fmt(row["__key__"])] if index else []) + [_fmt(row.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    if len(rows) > MAX_ROWS:
        lines.append(f"\n*{len(rows) - MAX_ROWS} more rows in the JSON.*")
    return lines + [""]


def _records(value) -> list[dict] | None:
    """Rows for a table: a list of dicts, or a dict whose values are all dicts (the key becomes a column)."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return value
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        rows = [{"__key__": k, **v} for k, v in value.items()]
        if all(any(_scalar(x) for x in row.values()) for row in rows):
            return rows
    return None


def _render(obj: dict, depth: int) -> list[str]:
    out: list[str] = []
    scalars = {k: v for k, v in obj.items() if _scalar(v)}
    if scalars:
        out += ["| key | value |", "| --- | --- |"] + [f"| {k} | {_fmt(v)} |" for k, v in scalars.items()] + [""]
    for key, value in obj.items():
        if key in scalars:
            continue
        heading = "#" * min(depth, 6) + f" {key}"
        rows = _records(value)
        if rows is not None:
            out += [heading, ""] + _table(rows, index="key" if isinstance(value, dict) else None)
            nested = [r for r in rows if any(isinstance(v, (dict, list)) and not _scalar(v) for v in r.values())]
            if nested and depth < 5:
                for row in nested[:MAX_ROWS]:
                    inner = {k: v for k, v in row.items() if k != "__key__" and not _scalar(v)}
                    if inner and "__key__" in row:
                        out += [f"{'#' * min(depth + 1, 6)} {key} / {row['__key__']}", ""] + _render(inner, depth + 2)
        elif isinstance(value, dict):
            out += [heading, ""] + _render(value, depth + 1)
        else:
            out += [heading, "", "```json", json.dumps(value)[:2000], "```", ""]
    return out


def _plot_compare(data: dict, name: str):
    """RMSE against the network's own float64 reference vs NFE, one line per solver (sdekit compare)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_solver: dict[str, list[tuple[float, float]]] = {}
    for r in data["records"]:
        if r.get("rmse_vs_reference") is not None and r.get("kind") == "deterministic":
            by_solver.setdefault(r["solver"], []).append((r["nfe"], r["rmse_vs_reference"]))
    if not by_solver:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for solver, points in sorted(by_solver.items()):
        points.sort()
        ax.loglog(*zip(*points), marker="o", label=solver)
    ax.set_xlabel("NFE")
    ax.set_ylabel("RMSE vs float64 reference")
    ax.set_title(name)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    return fig


def _plot_samplers(data: dict, name: str):
    """bench_samplers: each sdekit sampler on its best spacing and each diffusers configuration, RMSE vs NFE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for group, style in (("sdekit_best_spacing", "-"), ("diffusers", ":")):
        for label, cells in data.get(group, {}).items():
            points = sorted((c["nfe"], c["rmse_mean"]) for c in cells.values() if isinstance(c, dict) and "nfe" in c)
            if points:
                ax.loglog(*zip(*points), style, marker=".", label=label if style == "-" else f"diffusers {label}")
    ax.set_xlabel("NFE")
    ax.set_ylabel("RMSE vs exact flow (mean over seeds)")
    ax.set_title(f"{name}: sdekit (solid) vs diffusers (dotted)")
    ax.legend(fontsize=5, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    return fig


PLOTS = {"records": _plot_compare, "sdekit_best_spacing": _plot_samplers}


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _slug(name: str) -> str:
    return name.replace("/", "-")


def render_pages(results: pathlib.Path = RESULTS) -> tuple[str, dict[str, str], dict[str, bytes]]:
    """The index page's Markdown, one page per JSON file (``benchmarks/<name>.md`` -> Markdown) and the images
    (name -> PNG bytes), from every JSON file under ``results``.

    The index names each file, its script and its plot, and links to the file's own page, which holds every
    number in it: one page per file keeps each page readable (the sampler benchmarks alone hold thousands of
    cells)."""
    index = [INTRO, "Each file below has its own page with every number in it.", ""]
    pages: dict[str, str] = {}
    images: dict[str, bytes] = {}
    for path in sorted(results.rglob("*.json")):
        rel = path.relative_to(ROOT).as_posix()
        data = json.loads(path.read_text())
        name = path.relative_to(results).with_suffix("").as_posix()
        slug = _slug(name)
        page = f"benchmarks/{slug}.md"
        script = data.get("benchmark") if isinstance(data, dict) else None
        origin = f"File: `{rel}`" + (f", written by `benchmarks/{script}.py`." if script else ".")
        index += [f"## {name}", "", origin, ""]
        body = [f"# {name}", "", origin, "", "[All benchmark files](../benchmarks.md)", ""]
        if not isinstance(data, dict):
            body += _table(data) if _records(data) else ["```json", json.dumps(data)[:2000], "```", ""]
        else:
            for key, plot in PLOTS.items():
                if key in data:
                    fig = plot(data, name)
                    if fig is not None:
                        image = f"img/benchmarks/{slug}.png"
                        images[image] = _png(fig)
                        index += [f"![{name}: RMSE vs NFE]({image})", ""]
                        body += [f"![{name}: RMSE vs NFE](../{image})", ""]
            body += _render(data, depth=2)
        index += [f"[Every number in `{path.name}`]({page})", ""]
        pages[page] = "\n".join(body)
    return "\n".join(index), pages, images


def render_page(results: pathlib.Path = RESULTS) -> tuple[str, dict[str, bytes]]:
    """The index page and every file's page in one Markdown text, and the images (for a quick look or a test)."""
    index, pages, images = render_pages(results)
    return "\n\n".join([index, *pages.values()]), images


def on_files(files, config):
    """Add the generated pages and their plots to the site's files (mkdocs >= 1.6 ``File.generated``)."""
    from mkdocs.structure.files import File

    index, pages, images = render_pages()
    files.append(File.generated(config, PAGE, content=index))
    for name, markdown in pages.items():
        files.append(File.generated(config, name, content=markdown))
    for name, png in images.items():
        files.append(File.generated(config, name, content=png))
    return files
