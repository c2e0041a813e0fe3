"""Build the neuralbook website from nbs/*.ipynb using STORED outputs (no re-execution).

    python tools/book.py build   # writes _docs/
    python tools/book.py serve   # preview on http://127.0.0.1:8000
mkdocs.yml and the per-chapter API pages are generated into _book_build/ (git-ignored build folder).
"""
import argparse, functools, http.server, importlib, inspect, json, re, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"


def chapters():
    nbs = sorted(p for p in NBS.glob("*.ipynb") if p.name != "index.ipynb")
    return ([NBS / "index.ipynb"] if (NBS / "index.ipynb").exists() else []) + nbs


def default_exp(nb):
    for c in json.loads(nb.read_text())["cells"]:
        m = re.search(r"^#\|\s*default_exp\s+(\S+)", "".join(c["source"]), re.M)
        if c["cell_type"] == "code" and m:
            return m.group(1)


def api_markdown(mod_name):
    """Signature + docstring of each public name the module defines (via inspect)."""
    try:
        mod = importlib.import_module(f"neuralbook.{mod_name}")
    except Exception as e:  # keep the book building even if a module cannot import
        return f"*API of `neuralbook.{mod_name}` unavailable: {type(e).__name__}: {e}*\n"
    names = getattr(mod, "__all__", None) or [n for n in vars(mod) if not n.startswith("_")]
    out = []
    for n in names:
        obj = getattr(mod, n, None)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)) or getattr(obj, "__module__", "") != mod.__name__:
            continue
        try:
            sig = str(inspect.signature(obj))
        except (TypeError, ValueError):
            sig = "(...)"
        doc = inspect.getdoc(obj) or ""
        out.append(f"### `{n}{sig}`\n\n```text\n{doc}\n```\n" if doc else f"### `{n}{sig}`\n")
    return "\n".join(out) or "*No public names.*\n"


def build(out=ROOT / "_docs", work=ROOT / "_book_build"):
    out, work = Path(out), Path(work)
    shutil.rmtree(work, ignore_errors=True)
    docs = work / "docs"
    docs.mkdir(parents=True)
    sys.path.insert(0, str(ROOT))
    nav = []
    for nb in chapters():
        shutil.copy(nb, docs / nb.name)
        title = "Home" if nb.name == "index.ipynb" else nb.stem
        mod = default_exp(nb)
        if mod:
            (docs / f"{nb.stem}_api.md").write_text(f"# API: neuralbook.{mod}\n\n" + api_markdown(mod))
            nav.append({title: [{"Chapter": nb.name}, {"API": f"{nb.stem}_api.md"}]})
        else:
            nav.append({title: nb.name})
    extra_js = []
    mj = Path("/usr/share/javascript/mathjax")
    if mj.exists():
        shutil.copytree(mj, docs / "mathjax", symlinks=False)
        extra_js = ["mathjax/MathJax.js?config=TeX-AMS_CHTML"]
    cfg = {
        "site_name": "neuralbook", "docs_dir": "docs", "site_dir": str(out.resolve()),
        "theme": {"name": "material", "font": False, "features": ["navigation.footer"]},
        "plugins": ["search", {"mkdocs-jupyter": {"execute": False, "include_source": True}}],
        "markdown_extensions": [{"pymdownx.arithmatex": {"generic": True}}],
        "extra_javascript": extra_js, "nav": nav,
    }
    (work / "mkdocs.yml").write_text(json.dumps(cfg, indent=1))  # JSON is valid YAML
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "-q", "-f", str(work / "mkdocs.yml")], check=True)
    return out


def serve(out=ROOT / "_docs", port=8000):
    h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    print(f"serving {out} at http://127.0.0.1:{port}")
    http.server.ThreadingHTTPServer(("127.0.0.1", port), h).serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["build", "serve"])
    ap.add_argument("--port", type=int, default=8000)
    a = ap.parse_args()
    if a.cmd == "build":
        print(build())
    else:
        serve(port=a.port) if (ROOT / "_docs").exists() else (build(), serve(port=a.port))
