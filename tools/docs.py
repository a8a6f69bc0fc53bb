"""Render the notebooks as a static HTML site in _docs/ (no Quarto: it cannot be installed offline, see `make docs`).

API notebooks (nbs/*.ipynb) are committed without outputs: they are executed here as `nbdev-test` executes them
(cells flagged with one of the `tst_flags`, such as `#| slow`, are skipped) and their outputs kept. Tutorials
(nbs/tutorials/*.ipynb) carry the outputs of their full run and are rendered as committed. Plotly figures become
HTML drawn by a local copy of plotly.js, so the site works offline. Any failure -- a cell that raises, an error
output committed in a tutorial, a figure that cannot be drawn -- fails the build (exit status 1, naming the page).

    python tools/docs.py                    # everything, executing the API notebooks (2 workers)
    python tools/docs.py --no-execute       # API pages without outputs (the prose and code only)
    python tools/docs.py --only 11a_encoders tutorials/mohawk
"""

from __future__ import annotations
import argparse, html, json, os, re, shutil, sys, traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
DIRECTIVE = re.compile(r"^\s*#\s*\|\s*(.*)$")


def directives(src: str) -> list[str]:
    "The nbdev directives (`#| export`, `#| hide`, ...) at the top of a cell's source."
    out = []
    for line in src.splitlines():
        m = DIRECTIVE.match(line)
        if not m:
            break
        out.append(m.group(1).strip())
    return out


def strip_directives(src: str) -> str:
    "The cell's source without its leading directive lines."
    lines = src.splitlines()
    while lines and DIRECTIVE.match(lines[0]):
        lines.pop(0)
    return "\n".join(lines)


def tst_flags() -> list[str]:
    "The test flags of pyproject's [tool.nbdev] (cells flagged with one are skipped, as nbdev-test skips them)."
    from nbdev.config import get_config

    return str(get_config().tst_flags or "").split()


def execute(path: Path) -> dict:
    "Run an API notebook top to bottom in its folder as nbdev-test does (same cells skipped); return it with outputs."
    from fastcore.nbio import nb2dict
    from execnb.shell import CaptureShell
    from fastcore.xtras import working_directory
    from nbdev.process import NBProcessor
    from nbdev.test import _skip_cell

    os.environ["IN_TEST"] = "1"
    nb = NBProcessor(path, rm_directives=False, process=True).nb
    with working_directory(path.parent):
        CaptureShell(path).run_all(nb, exc_stop=True, preproc=_skip_cell(nb, tst_flags(), None))
    return json.loads(json.dumps(nb2dict(nb)))


def _execute_worker(path: str) -> tuple[str, dict | None, str]:
    try:
        return path, execute(Path(path)), ""
    except BaseException:
        return path, None, traceback.format_exc(limit=6)


def plotly_html(fig_json: dict, div: int) -> str:
    "A figure's JSON as an HTML div drawn by the page's plotly.js (loaded once, locally)."
    import plotly.io as pio

    fig = pio.from_json(json.dumps(fig_json), skip_invalid=True)
    return pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"fig{div}")


def api_docs(src: str, module: str, page: str) -> tuple[list[str], list[str]]:
    "nbdev's `show_doc` of each public function and class an exported cell defines, as markdown; the problems found."
    import ast, importlib, inspect
    from nbdev.showdoc import show_doc

    mod = importlib.import_module(f"ssm_distill.{module}")
    public = set(getattr(mod, "__all__", []))
    names = [n.name for n in ast.parse(src).body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in public]
    docs, problems = [], []
    for name in names:
        obj = getattr(mod, name)
        try:
            md = show_doc(obj)._repr_markdown_()
        except (
            NameError
        ):  # show_doc evaluates string annotations; an inherited one may name a type only its module imports
            try:
                sig = f"```python\n{name}{inspect.signature(obj)}\n```"
                md = f"---\n\n### {name}\n\n{sig}\n\n*{inspect.getdoc(obj) or ''}*"
            except Exception as e:
                problems.append(f"{page}: no signature table for {module}.{name}: {e}")
                continue
        except Exception as e:
            problems.append(f"{page}: no signature table for {module}.{name}: {e}")
            continue
        docs.append(
            re.sub(r"^\[source\]\(.*$\n?", "", md, flags=re.M)
        )  # nbdev's source link (no line number without Quarto)
    return docs, problems


def prepare(nb: dict, page: str) -> list[str]:
    """Make `nb` (a dict) ready for HTML in place: hidden cells and directives out, plotly figures as HTML, each
    exported function's and class's signature table (nbdev's `show_doc`) under its code; the problems found."""
    import nbformat

    problems, cells, n_fig, module = [], [], 0, None
    for c in nb["cells"]:
        src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        c.get("metadata", {}).pop("execution", None)  # execnb's timings (numbers, where the format wants strings)
        if c["cell_type"] == "code":
            ds = directives(src)
            module = next((d.split()[1] for d in ds if d.startswith("default_exp ") and len(d.split()) > 1), module)
            if "hide" in ds or not strip_directives(src).strip():
                continue
            c["source"] = strip_directives(src)
            if module and {"export", "exports"} & set(ds):
                docs, bad = api_docs(c["source"], module, page)
                problems += bad
                after = [nbformat.v4.new_markdown_cell(md) for md in docs]
            else:
                after = []
            for o in c.get("outputs", []):
                if o.get("output_type") == "error":
                    problems.append(f"{page}: a cell raised {o.get('ename')}: {o.get('evalue')}")
                data = o.get("data", {})
                if PLOTLY_MIME in data and "text/html" not in data:
                    try:
                        data["text/html"] = plotly_html(data[PLOTLY_MIME], n_fig)
                        n_fig += 1
                    except Exception as e:
                        problems.append(f"{page}: a plotly figure cannot be drawn: {e}")
                data.pop(PLOTLY_MIME, None)
                data.pop("application/vnd.jupyter.widget-view+json", None)
            cells += [c, *after]
            continue
        cells.append(c)
    nb["cells"] = cells
    nb.get("metadata", {}).pop("widgets", None)
    nbformat.validate(nbformat.from_dict(nb))
    return problems


def title_of(nb: dict, fallback: str) -> tuple[str, str]:
    "The notebook's `# title` and its `> summary` line."
    for c in nb["cells"]:
        if c["cell_type"] != "markdown":
            continue
        src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        m = re.search(r"^#\s+(.+)$", src, re.M)
        if m:
            s = re.search(r"^>\s*(.+(?:\n>\s*.+)*)", src, re.M)
            return m.group(1).strip(), re.sub(r"\n>\s*", " ", s.group(1)).strip() if s else ""
    return fallback, ""


PLOTLY_TAG = '<script src="{}plotly.min.js" charset="utf-8"></script>'


def render(nb: dict, dest: Path, depth: int):
    "Write `nb` as a standalone HTML page (the lab template) that loads the site's plotly.js."
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.from_dict(nb))
    body = body.replace("</head>", PLOTLY_TAG.format("../" * depth) + "\n</head>", 1)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(body)


def index_page(pages: list[tuple[str, str, str]]) -> str:
    "The site's front page: the README's title, then a link per page with its summary."
    items = lambda group: "\n".join(
        f'<li><a href="{html.escape(href)}">{html.escape(t)}</a> {html.escape(s)}</li>'
        for href, t, s in pages
        if href.startswith("tutorials/") == group
    )
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>ssm_distill</title></head>'
        f'<body style="font-family: sans-serif; max-width: 60em; margin: 2em auto"><h1>ssm_distill</h1>'
        f"<p>Rendered from the notebooks in <code>nbs/</code>.</p>"
        f"<h2>Tutorials</h2><ul>{items(True)}</ul><h2>Modules</h2><ul>{items(False)}</ul></body></html>"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "_docs"))
    ap.add_argument("--no-execute", action="store_true", help="render the API notebooks without running them")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="notebook names without .ipynb (tutorials/<name> for a tutorial)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    api = sorted(p for p in NBS.glob("*.ipynb") if p.stem != "index")
    tutorials = sorted((NBS / "tutorials").glob("*.ipynb"))
    if args.only:
        want = set(args.only)
        api = [p for p in api if p.stem in want]
        tutorials = [p for p in tutorials if f"tutorials/{p.stem}" in want]
    out.mkdir(parents=True, exist_ok=True)
    import plotly

    shutil.copy(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", out / "plotly.min.js")
    problems, notebooks = [], {}
    if args.no_execute:
        notebooks |= {p: json.loads(p.read_text()) for p in api}
    else:
        with ProcessPoolExecutor(args.workers) as ex:
            for path, nb, err in ex.map(_execute_worker, map(str, api)):
                if nb is None:
                    problems.append(f"{Path(path).name}: execution failed:\n{err}")
                else:
                    notebooks[Path(path)] = nb
                print(f"executed {Path(path).name}" + (" (FAILED)" if nb is None else ""), flush=True)
    notebooks |= {p: json.loads(p.read_text()) for p in tutorials}
    pages = []
    import nbformat

    for path, nb in notebooks.items():
        nb = nbformat.reads(json.dumps(nb), as_version=4)  # multi-line strings joined, as nbformat reads a file
        rel = path.relative_to(NBS).with_suffix(".html")
        page_problems = prepare(nb, str(path.relative_to(ROOT)))
        problems += page_problems
        render(nb, out / rel, len(rel.parts) - 1)
        pages.append((str(rel), *title_of(nb, path.stem)))
        print(f"wrote {out / rel}" + (f" ({len(page_problems)} problems)" if page_problems else ""), flush=True)
    (out / "index.html").write_text(index_page(pages))
    for p in problems:
        print(f"ERROR {p}", file=sys.stderr)
    print(f"{len(pages)} pages in {out}; {len(problems)} problems", file=sys.stderr if problems else sys.stdout)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
