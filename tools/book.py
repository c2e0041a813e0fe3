"""Build the neuralbook website from nbs/PART/*.ipynb with their STORED outputs (nothing is re-executed).

    python tools/book.py build                # writes _docs/ (git-ignored); prints the time it took
    python tools/book.py serve [--port 8000]  # builds, then serves _docs/ on http://127.0.0.1:8000 for reading

Renderer: MkDocs + Material for MkDocs + mkdocs-jupyter (pip extra `book`). quarto (and so `nbdev-docs`) cannot be
installed offline: the `quarto-cli` sdist downloads the quarto binary from GitHub while it builds; jupyter-book 2
fetches its theme at build time. MkDocs builds offline, renders the notebooks' stored outputs through nbconvert, and
gives a sidebar, a per-page table of contents, previous/next links and a client-side search box.

What the build does with each notebook (a copy under the work folder; nbs/ is never touched):
  * chapters are every `nbs/PART/*.ipynb` (index first, then the parts in order, each sorted by name); the nav has
    one section per part, and a chapter's title is the notebook's first `# `;
  * nbdev directive lines (`#| export`, ...) are dropped from code cells, `#| hide` cells are dropped;
  * links between notebooks (`02_functional.ipynb#x`) are pointed at the rendered pages (`02_functional.html#x`);
  * a chapter with `#| default_exp mod` gets an "API reference" section: signature and docstring of every public
    name its `#| export` cells define, read from the imported module with `inspect`;
  * the front page gets a generated list of all chapters with links (its own chapter table stays as written).
MathJax 2.7 is copied from the `jupyter-server-mathjax` wheel into the site, so math is typeset with no network.
"""
from __future__ import annotations

import argparse
import ast
import copy
import functools
import http.server
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe,local/neuralbook"
# MathJax 2 options the nbconvert template does not set. The wheel ships only the STIX-Web fonts, so HTML-CSS output
# is told to use them; the @font-face rules that would fetch missing or blocked files (the `about:blank` probe font of
# HTML-CSS; the TeX fonts that the hidden assistive MathML names for \mathbb, \mathcal, \mathfrak) are pointed at
# local() fonts, which fetch nothing. The whole page is typeset in one pass (no preview pass, no chunk delays), and the
# hidden copy of each code cell's source that the copy button uses is not searched for math.
_NATIVE_FONTS = [("MathJax_Caligraphic-WEB", ""), ("MathJax_Caligraphic-WEB", "bold"), ("MathJax_AMS-WEB", ""),
                 ("MathJax_Script-WEB", ""), ("MathJax_Fraktur-WEB", ""), ("MathJax_Fraktur-WEB", "bold")]
_NATIVE_STYLES = ",\n".join(
    f'    "@font-face /*{i}*/": {{"font-family": "{fam}", src: "local(\'{fam}\')"'
    + (f', "font-weight": "{w}"' if w else "") + "}" for i, (fam, w) in enumerate(_NATIVE_FONTS, 1))
MATHJAX_LOCAL = """MathJax.Hub.Config({
  "HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null,
               EqnChunk: 1000, EqnChunkFactor: 1, EqnChunkDelay: 0,
               styles: {"@font-face": {"font-family": "MathJax_Blank", src: "local('MathJax_Blank')"}}},
  NativeMML: {styles: {
NATIVE_STYLES
  }},
  tex2jax: {ignoreClass: "tex2jax_ignore|clipboard-copy-txt"},
  "fast-preview": {disabled: true},
  menuSettings: {zoom: "None", CHTMLpreview: false},
  showMathMenu: false
});
MathJax.Ajax.loadComplete("[MathJax]/config/local/neuralbook.js");
""".replace("NATIVE_STYLES", _NATIVE_STYLES)
DIRECTIVE = re.compile(r"^\s*#\|\s*(.*)$")


def _src(cell) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


# the book's parts are the sub-folders of nbs/, in learning order (issue 19); a chapter's page is NAME.html at the top
PART_TITLES = {"1_learning": "I · Learning from scratch", "2_architectures": "II · Architectures",
               "3_large_models": "III · Large models and applications", "4_engineering": "IV · Engineering",
               "5_keras": "V · The Keras API, layer by layer"}


def part_title(folder: str) -> str:
    return PART_TITLES.get(folder) or folder.split("_", 1)[-1].replace("_", " ").capitalize()


def chapters(nbs: Path = NBS) -> list[Path]:
    """Every notebook of the book, discovered from `nbs/`: the front page first, then each part's chapters by name
    (parts are the folders `nbs/N_name/`, in the order of N; a notebook directly in `nbs/` comes after them)."""
    nbs = Path(nbs)
    found = sorted(nbs.glob("[0-9]*_*/*.ipynb")) + sorted(p for p in nbs.glob("*.ipynb") if p.name != "index.ipynb")
    index = nbs / "index.ipynb"
    return ([index] if index.exists() else []) + found


def directives(cell) -> list[str]:
    out = []
    for line in _src(cell).splitlines():
        m = DIRECTIVE.match(line)
        if m:
            out.append(m.group(1).strip())
    return out


def title_of(nb: dict, fallback: str) -> str:
    for c in nb["cells"]:
        if c["cell_type"] == "markdown":
            for line in _src(c).splitlines():
                if line.startswith("# "):
                    return re.sub(r"`|\*\*", "", line[2:]).strip()  # the nav shows plain text
    return fallback


def default_exp(nb: dict) -> str | None:
    """The module a chapter exports to (`optim.__init__` -> `optim`, `__init__` -> the package itself)."""
    for c in nb["cells"]:
        if c["cell_type"] != "code":
            continue
        for d in directives(c):
            m = re.match(r"default_exp\s+(\S+)", d)
            if m:
                mod = re.sub(r"(^|\.)__init__$", "", m.group(1))
                return mod
    return None


def exported_names(nb: dict) -> list[str]:
    """Public top-level names (def, class, assignment) that the notebook's `#| export` cells define, in order."""
    names = []
    for c in nb["cells"]:
        if c["cell_type"] != "code" or not any(re.match(r"exports?\b", d) for d in directives(c)):
            continue
        code = "\n".join(l for l in _src(c).splitlines() if not DIRECTIVE.match(l) and not l.lstrip().startswith(("%", "!")))
        try:
            tree = ast.parse(code)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found = [node.name]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                found = [e.id for t in targets for e in ast.walk(t) if isinstance(e, ast.Name)]
            else:
                found = []
            names += [n for n in found if not n.startswith("_") and n not in names]
    return names


def _signature(obj) -> str:
    try:
        sig = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"
    # modules written with `from __future__ import annotations` have string annotations: show them unquoted
    return re.sub(r"(:\s|->\s)'([^']*)'", r"\1\2", sig)


def _methods(cls) -> list[str]:
    """One line per public method/property the class itself defines: `name(sig)` and its docstring's first line."""
    rows = []
    for name, raw in vars(cls).items():
        if name.startswith("_") and name not in ("__call__",):
            continue
        if isinstance(raw, property):
            fn, sig = raw.fget, ""
        elif isinstance(raw, (staticmethod, classmethod)):
            fn = raw.__func__
            sig = _signature(getattr(cls, name))
        elif inspect.isfunction(raw):
            fn = raw
            sig = re.sub(r"^\(self,?\s*", "(", _signature(raw))
        else:
            continue
        first = (inspect.getdoc(fn) or "").strip().split("\n\n")[0].replace("\n", " ")
        rows.append(f"- `{name}{sig}`" + (f": {first}" if first else ""))
    return rows


def api_markdown(mod_name: str, names: list[str]) -> str:
    """The "API reference" section of a chapter: signature + docstring of each exported name (read with inspect)."""
    full = f"neuralbook.{mod_name}" if mod_name else "neuralbook"
    head = f"## API reference\n\nThe names this chapter exports to `{full}`.\n"
    try:
        mod = importlib.import_module(full)
    except Exception as e:  # noqa: BLE001 - the book builds even when a module cannot be imported here
        return head + f"\n*The module `{full}` could not be imported while building the book ({type(e).__name__}).*\n"
    public = getattr(mod, "__all__", None)
    out = []
    for n in names:
        if public is not None and n not in public or not hasattr(mod, n):
            continue
        obj = getattr(mod, n)
        if inspect.isclass(obj):
            entry = f"### `{n}`\n\n```python\nclass {n}{_signature(obj)}\n```\n"
            doc = inspect.getdoc(obj) or ""
            methods = _methods(obj)
        elif callable(obj):
            entry = f"### `{n}`\n\n```python\n{n}{_signature(obj)}\n```\n"
            doc, methods = inspect.getdoc(obj) or "", []
        else:
            r = repr(obj)
            r = r if len(r) <= 100 else r[:97] + "..."
            entry = f"### `{n}`\n\n```python\n{n}: {type(obj).__name__} = {r}\n```\n"
            doc, methods = "", []
        if doc:
            entry += "\n" + doc + "\n"
        if methods:
            entry += "\n" + "\n".join(methods) + "\n"
        out.append(entry)
    return head + "\n" + ("\n".join(out) if out else "*No public names.*\n")


# a code span/fence (left alone), or a $$...$$ / $...$ math span
MATH_SPAN = re.compile(r"(```.*?```|~~~.*?~~~|`[^`]*`)|(\$\$.+?\$\$|(?<![\\$])\$(?!\$)[^$]+?(?<!\\)\$)", re.DOTALL)


def join_math_lines(md: str) -> str:
    """Put each math span of a markdown cell on one line, as Jupyter's own renderer protects math from Markdown:
    a line of a formula that starts with `+`, `-` or `1.` would otherwise become a list item in the rendered page.
    (TeX reads a line break as a space; spans with a `%` comment or a blank line are left as they are.)"""
    def one_line(m):
        span = m.group(2)
        if m.group(1) or "\n" not in span or "\n\n" in span or "%" in span:
            return m.group(0)
        return re.sub(r"[ \t]*\n[ \t]*", " ", span)
    return MATH_SPAN.sub(one_line, md)


def _md_cell(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def prepare(nb_path: Path, pages: dict[str, str], toc: list[tuple[str, str]]) -> dict:
    """The notebook as the site shows it: directives out, `#| hide` cells out, notebook links -> page links,
    the API reference appended (chapters) or the list of chapters appended (front page)."""
    nb = json.loads(Path(nb_path).read_text(encoding="utf-8"))
    cells = []
    link = re.compile(r"(\]\(|href=[\"'])(?:\.\./[\w.-]+/|\.\./|[\w.-]+/)?([\w.-]+)\.ipynb(?=[#)\"'])")
    image = re.compile(r"(\]\(|src=[\"'])(?:\.\./)+(images/)")  # pages sit at the top, next to images/
    for c in nb["cells"]:
        c = copy.deepcopy(c)
        if c["cell_type"] == "code":
            ds = directives(c)
            if "hide" in ds or any(re.match(r"default_exp\b", d) for d in ds) and len(_src(c).strip().splitlines()) == 1:
                continue
            if re.fullmatch(r"\s*(import nbdev;\s*)?(nbdev\.)?nbdev_export\(\)\s*", _src(c)):
                continue
            lines = [l for l in _src(c).splitlines() if not DIRECTIVE.match(l)]
            c["source"] = "\n".join(lines).strip("\n")
        elif c["cell_type"] == "markdown":
            c["source"] = image.sub(r"\1\2", link.sub(lambda m: m.group(1) + pages[m.group(2)]
                                                    if m.group(2) in pages else m.group(0), join_math_lines(_src(c))))
        cells.append(c)
    mod = default_exp(nb)
    if Path(nb_path).name == "index.ipynb":
        rows, part = [], None
        for entry in toc:
            title, url, folder = (*entry, None)[:3]
            if url == "index.html":
                continue
            if folder and folder != part:
                part = folder
                rows.append(f"\n**{part_title(folder)}**\n")
            rows.append(f"- [{title}]({url})")
        cells.append(_md_cell("## Read the book\n\nEvery chapter of this build, in order:\n\n" + "\n".join(rows) + "\n"))
    elif mod is not None:
        cells.append(_md_cell(api_markdown(mod, exported_names(nb))))
    nb["cells"] = cells
    return nb


def mkdocs_config(site_dir: Path, nav: list, cache_dir: Path) -> dict:
    return {
        "site_name": "neuralbook",
        "site_description": "A neural-network framework built from scratch and taught as a book of notebooks",
        "docs_dir": "docs", "site_dir": str(Path(site_dir).resolve()),
        "use_directory_urls": False,  # every page is NAME.html at the top: relative asset paths work everywhere
        "theme": {
            "name": "material", "font": False,  # no Google Fonts: the site must work offline
            "features": ["navigation.footer", "navigation.top", "toc.follow", "search.highlight"],
            "palette": {"primary": "indigo", "accent": "indigo"},
        },
        "plugins": ["search", {"mkdocs-jupyter": {
            "execute": False, "include_source": True, "allow_errors": True, "no_prompt": True,
            "ignore_h1_titles": True,  # keep the nav titles (the notebook's H1 as plain text, code included)
            "custom_mathjax_url": f"mathjax/MathJax.js?config={MATHJAX_CONFIG}",
            "cache_dir": str(cache_dir), "toc_depth": 3,
        }}],
        "hooks": [str(Path(__file__).resolve().with_name("book_hooks.py"))],  # a TOC from the real headings
        "markdown_extensions": ["toc", "tables", "fenced_code"],
        "nav": nav,
    }


def mathjax_dir() -> Path:
    try:
        import jupyter_server_mathjax
    except ImportError as e:
        raise SystemExit("the book needs MathJax from the `jupyter-server-mathjax` package: "
                         "pip install -e '.[book]'") from e
    return Path(jupyter_server_mathjax.__file__).parent / "static"


def build(out: Path = ROOT / "_docs", work: Path = ROOT / "_book_build", nbs: Path = NBS, quiet: bool = True) -> Path:
    """Build the site into `out` from the notebooks in `nbs` (stored outputs); `work` holds the generated sources."""
    out, work, nbs = Path(out).resolve(), Path(work).resolve(), Path(nbs).resolve()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    docs = work / "docs"
    shutil.rmtree(docs, ignore_errors=True)
    docs.mkdir(parents=True)
    books = chapters(nbs)
    if not books:
        raise SystemExit(f"no notebooks in {nbs}")
    raw = {p: json.loads(p.read_text(encoding="utf-8")) for p in books}
    pages = {p.stem: p.stem + ".html" for p in books}
    toc = [(title_of(raw[p], p.stem), pages[p.stem], None if p.parent == nbs else p.parent.name) for p in books]
    nav, sections = [], {}
    for p, (title, *_) in zip(books, toc):
        (docs / p.name).write_text(json.dumps(prepare(p, pages, toc), indent=1), encoding="utf-8")
        entry = {("Home" if p.name == "index.ipynb" else title): p.name}
        if p.parent == nbs:
            nav.append(entry)
        else:  # one nav section per part
            if p.parent.name not in sections:
                sections[p.parent.name] = []
                nav.append({part_title(p.parent.name): sections[p.parent.name]})
            sections[p.parent.name].append(entry)
    for d in sorted(x for x in nbs.iterdir() if x.is_dir() and x.name in ("images", "figures", "img", "assets")):
        shutil.copytree(d, docs / d.name)  # pictures a markdown cell links to
    shutil.copytree(mathjax_dir(), docs / "mathjax", ignore=shutil.ignore_patterns("*.md", "LICENSE*"))
    (docs / "mathjax" / "config" / "local").mkdir(parents=True, exist_ok=True)
    (docs / "mathjax" / "config" / "local" / "neuralbook.js").write_text(MATHJAX_LOCAL)
    cfg = mkdocs_config(out, nav, work / "cache")
    (work / "mkdocs.yml").write_text(json.dumps(cfg, indent=1))  # JSON is valid YAML
    cmd = [sys.executable, "-m", "mkdocs", "build", "--clean", "-f", str(work / "mkdocs.yml")] + (["-q"] if quiet else [])
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    subprocess.run(cmd, check=True, cwd=work, env=env)
    return out


def serve(out: Path = ROOT / "_docs", port: int = 8000, host: str = "127.0.0.1"):
    """Serve the built site for local reading (a plain static server: what a reader's web host would do)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    with http.server.ThreadingHTTPServer((host, port), handler) as httpd:
        print(f"serving {out} at http://{host}:{httpd.server_address[1]}/  (Ctrl-C stops)")
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass


def main(argv=None):
    ap = argparse.ArgumentParser(description="Build or serve the neuralbook website (pip extra `book`).")
    ap.add_argument("cmd", choices=["build", "serve"])
    ap.add_argument("--out", type=Path, default=ROOT / "_docs", help="site folder (default: _docs/)")
    ap.add_argument("--port", type=int, default=8000, help="serve: port on 127.0.0.1 (default 8000)")
    ap.add_argument("--no-build", action="store_true", help="serve: serve the existing site without rebuilding")
    a = ap.parse_args(argv)
    if a.cmd == "build" or not (a.no_build and a.out.exists()):
        t0 = time.perf_counter()
        out = build(a.out)
        print(f"built {len(chapters())} pages into {out} in {time.perf_counter() - t0:.1f} s")
    if a.cmd == "serve":
        serve(a.out, a.port)


if __name__ == "__main__":
    main()
