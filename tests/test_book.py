"""The book as a website (tools/book.py), opened page by page in a real browser.

The site is built from nbs/ (stored outputs) into a temporary folder, served from a thread on 127.0.0.1, and every
page is opened in headless Chromium (Debian's `chromium`, driven by Playwright with `executable_path`; Playwright's
own browser download is never used). Each page must: load with no console error, no failed request and no request
that leaves 127.0.0.1; show every image (naturalWidth > 0); have its math typeset by the local MathJax (output
elements present, no MathJax error, no `$$` left in the visible text); have previous/next links, a table of
contents, the search box and, for a chapter that exports code, the API reference; and every internal link on it must
answer HTTP 200 from the local server (with its #anchor present on the target page). Screenshots of chapter 02 and a
Keras chapter are written into the test's temporary folder.

Skips, with the reason, when the `book` extra (mkdocs, mkdocs-material, mkdocs-jupyter, jupyter-server-mathjax,
playwright) or the browser (`apt-get install -y chromium`; or set NEURALBOOK_CHROMIUM) is missing.
"""
from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
BOOK_EXTRA = ("mkdocs", "material", "mkdocs_jupyter", "jupyter_server_mathjax")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  # several pages typeset at once: none of them may be throttled as a background tab
                  "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                  "--disable-backgrounding-occluded-windows"]
MATH = re.compile(r"\$\$.+?\$\$|\$[^$\n]+\$", re.DOTALL)


def _missing(mods):
    return [m for m in mods if importlib.util.find_spec(m) is None]


def _load_book():
    spec = importlib.util.spec_from_file_location("neuralbook_book_tool", ROOT / "tools" / "book.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _chromium():
    for c in (os.environ.get("NEURALBOOK_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return None


needs_book = pytest.mark.skipif(bool(_missing(BOOK_EXTRA)), reason=(
    f"the `book` extra is not installed (missing {', '.join(_missing(BOOK_EXTRA))}): pip install -e '.[book]'"))


def _notebooks():
    return [p.stem for p in sorted(NBS.rglob("*.ipynb")) if "_src" not in p.parts and ".ipynb_checkpoints" not in p.parts]


def _path(stem):
    return next(p for p in NBS.rglob(f"{stem}.ipynb") if "_src" not in p.parts)


def _has_math(nb_path):
    nb = json.loads(Path(nb_path).read_text(encoding="utf-8"))
    return any(MATH.search("".join(c["source"])) for c in nb["cells"] if c["cell_type"] == "markdown")


def _exports(stem):
    nb = json.loads(_path(stem).read_text(encoding="utf-8"))
    return any(re.search(r"^#\|\s*export", "".join(c["source"]), re.MULTILINE) for c in nb["cells"] if c["cell_type"] == "code")


# ---------------------------------------------------------------- the site, built once, served from a thread
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if _missing(BOOK_EXTRA):
        pytest.skip("the `book` extra is not installed: pip install -e '.[book]'")
    book = _load_book()
    tmp = tmp_path_factory.mktemp("book")
    t0 = time.perf_counter()
    out = book.build(out=tmp / "site", work=tmp / "work")
    print(f"book built in {time.perf_counter() - t0:.1f} s into {out}")
    return out


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(site):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    th = threading.Thread(target=httpd.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    if _missing(["playwright"]):
        pytest.skip("playwright is not installed (it is in the `book` extra): pip install -e '.[book]'")
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium is not installed: apt-get install -y chromium (or set NEURALBOOK_CHROMIUM)")
    from playwright.sync_api import sync_playwright
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path_factory.mktemp("browser"))  # new, empty
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=exe, headless=True, args=CHROMIUM_FLAGS,
                                                    viewport={"width": 1280, "height": 900})
        ctx.set_default_timeout(120_000)
        # report each TeX error with its message (MathJax 2 reads window.MathJax.AuthorInit before it starts)
        ctx.add_init_script("window.MathJax = {AuthorInit: function () { MathJax.Hub.Register.MessageHook("
                            "'TeX Jax - parse error', function (m) { console.error('TeX error: ' + m[1] + ' in: ' + m[2]); });"
                            " }};")
        yield ctx
        ctx.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    return tmp_path_factory.mktemp("screenshots")


# ---------------------------------------------------------------- without a browser: the build itself
@needs_book
def test_book_discovers_every_notebook_and_renders_offline(site):
    pages = {p.stem for p in site.glob("*.html")} - {"404"}
    assert pages == set(_notebooks()), "every notebook under nbs/ becomes one page, nothing else"
    for stem in _notebooks():
        html = (site / f"{stem}.html").read_text(encoding="utf-8")
        srcs = re.findall(r'<(?:script|link|img)\b[^>]*?\b(?:src|href)="([^"]+)"', html)
        remote = [s for s in srcs if re.match(r"(https?:)?//", s)]
        assert not remote, f"{stem}.html loads files from the network: {remote}"
        assert "mathjax/MathJax.js" in html, f"{stem}.html does not load the local MathJax"
        if _exports(stem) and stem != "99_package":
            assert 'id="api-reference"' in html, f"{stem}.html has no API reference"
    assert (site / "mathjax" / "MathJax.js").is_file() and (site / "search" / "search_index.json").is_file()


@needs_book
def test_api_reference_shows_signature_and_docstring(site):
    book = _load_book()
    nb = json.loads((NBS / "1_learning" / "02_autograd.ipynb").read_text(encoding="utf-8"))
    names = book.exported_names(nb)
    assert "Tensor" in names and "Function" in names and not any(n.startswith("_") for n in names)
    nb = json.loads((NBS / "1_learning" / "02b_gradcheck.ipynb").read_text(encoding="utf-8"))
    assert "gradcheck" in book.exported_names(nb)
    html = (site / "02b_gradcheck.html").read_text(encoding="utf-8")
    api = html[html.index('id="api-reference"'):]
    from neuralbook.gradients import gradcheck
    first_doc_line = gradcheck.__doc__.strip().splitlines()[0][:30]
    assert "gradcheck" in api and re.sub(r"`", "", first_doc_line).split()[0] in api


# ---------------------------------------------------------------- in the browser, page by page
WAIT_IMAGES = """() => Promise.all(Array.from(document.images).map(i => i.complete ? 1 :
    new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })))"""
WAIT_MATHJAX = """() => new Promise(done => {
    const t0 = Date.now();
    (function poll() {
        if (window.MathJax && MathJax.Hub && MathJax.Hub.Queue) { MathJax.Hub.Queue(() => done('typeset')); }
        else if (Date.now() - t0 > 20000) { done('no MathJax'); }
        else { setTimeout(poll, 50); }
    })();
})"""
INSPECT = """() => {
    const skip = el => el.closest('pre, code, script, style, textarea, .MathJax, .MathJax_Display, .MathJax_Preview');
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    let visible = [];
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
        const el = n.parentElement;
        if (!el || skip(el) || !el.getClientRects().length) continue;
        visible.push(n.nodeValue);
    }
    const q = s => document.querySelectorAll(s).length;
    return {
        images: Array.from(document.images).map(i => [i.naturalWidth, (i.getAttribute('src') || '').slice(0, 60)]),
        math: q('.MathJax, .MathJax_Display'),
        math_errors: q('.merror, .noError, .MathJax_Error'),
        text: visible.join(' '),
        links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
        prev_next: q('.md-footer__link--prev') + q('.md-footer__link--next'),
        toc: q('.md-nav--secondary .md-nav__link'),
        search: q('input.md-search__input'),
        api: q('#api-reference'),
        title: document.title,
    };
}"""


TABS = 3  # pages open at once: Chromium typesets each in its own process, so the two cores are both used


def _check_links(links, base, cache):
    """Every link into the site answers 200 and, with a #fragment, the target page has that id."""
    bad = []
    for href in links:
        url, _, frag = href.partition("#")
        if not url.startswith(base):
            continue  # an external link (the theme's credit line): not fetched, the test is offline
        if url not in cache:
            try:
                with urllib.request.urlopen(url, timeout=30) as r:
                    body = r.read().decode("utf-8", "replace") if url.endswith(".html") else ""
                    cache[url] = (r.status, set(re.findall(r'\b(?:id|name)="([^"]*)"', body)))
            except urllib.error.HTTPError as e:
                cache[url] = (e.code, set())
        status, ids = cache[url]
        if status != 200:
            bad.append(f"{href} -> HTTP {status}")
        elif frag and url.endswith(".html") and urllib.parse.unquote(frag) not in ids:
            bad.append(f"{href} -> no #{frag} on that page")
    return bad


def _open(browser, server, stem):
    page = browser.new_page()
    rec = {"errors": [], "remote": [], "inflight": set()}
    errors, remote, inflight = rec["errors"], rec["remote"], rec["inflight"]
    page.on("request", lambda r: inflight.add(r))
    page.on("requestfinished", lambda r: inflight.discard(r))
    page.on("requestfailed", lambda r: inflight.discard(r))
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url} ({r.failure})"))
    page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    page.on("request", lambda r: remote.append(r.url) if not r.url.startswith((server, "data:", "blob:")) else None)
    resp = page.goto(server + f"{stem}.html", wait_until="commit")
    rec["status"] = resp.status if resp is not None else None
    return stem, page, rec


def _finish(stem, page, rec, shots):
    try:
        page.wait_for_load_state("load")
        rec["mathjax"] = page.evaluate(WAIT_MATHJAX)
        page.evaluate(WAIT_IMAGES)
        quiet_since, t0 = None, time.monotonic()  # wait until no request has been open for 0.3 s (search index...)
        while time.monotonic() - t0 < 60:
            if rec["inflight"]:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 0.3:
                break
            page.wait_for_timeout(50)
        else:
            rec["errors"].append(f"requests still open after 60 s: {[r.url for r in rec['inflight']]}")
        rec.update(page.evaluate(INSPECT))
        if stem in _screenshot_stems():
            page.screenshot(path=str(shots / f"{stem}.png"))
            figure = page.locator(".jp-OutputArea-output img").first
            if figure.count():
                figure.scroll_into_view_if_needed()
                page.screenshot(path=str(shots / f"{stem}_figure.png"))
    except Exception as e:  # noqa: BLE001 - reported by the page's test
        rec["errors"].append(f"the browser could not finish the page: {type(e).__name__}: {e}")
    finally:
        page.close()
        rec.pop("inflight")
    return rec


@pytest.fixture(scope="module")
def visits(server, browser, shots):
    """Open every page, TABS at a time; what each page showed, by notebook name."""
    pending, inflight, results = _notebooks(), [], {}
    t0 = time.perf_counter()
    while pending or inflight:
        while pending and len(inflight) < TABS:
            inflight.append(_open(browser, server, pending.pop(0)))
        stem, page, rec = inflight.pop(0)
        results[stem] = _finish(stem, page, rec, shots)
    print(f"{len(results)} pages opened in {time.perf_counter() - t0:.1f} s; screenshots in {shots}")
    return results


_LINK_CACHE: dict = {}


def _screenshot_stems():
    """The autograd chapter and the first Keras chapter (whatever their numbers are today)."""
    stems = _notebooks()
    return [s for s in stems if s.endswith("_autograd")][:1] + [s for s in stems if "keras" in s][:1]


@needs_book
@pytest.mark.parametrize("stem", _notebooks())
def test_page_in_browser(stem, visits, server, site):
    info = visits[stem]
    assert info["status"] == 200, f"{stem}.html: HTTP {info['status']}"
    assert not info["errors"], f"{stem}: " + "\n".join(info["errors"])
    assert not info["remote"], f"{stem}: requests that leave 127.0.0.1: {info['remote']}"
    assert info["mathjax"] == "typeset", f"{stem}: MathJax did not start"
    broken = [src for w, src in info["images"] if w == 0]
    assert not broken, f"{stem}: images that did not load: {broken}"
    if _has_math(site / f"{stem}.ipynb"):  # the copy the page was made from (nbs/ may have changed since)
        assert info["math"] > 0, f"{stem}: the page has LaTeX but MathJax typeset nothing"
    assert info["math_errors"] == 0, f"{stem}: MathJax reported {info['math_errors']} TeX errors"
    assert "$$" not in info["text"], f"{stem}: raw $$ left in the visible text"
    raw = re.search(r".{0,80}\\(frac|begin|mathbb|sum|partial)\b.{0,80}", info["text"], re.DOTALL)
    assert not raw, f"{stem}: untypeset LaTeX in the text: {raw and raw.group(0)!r}"
    assert info["search"] == 1, f"{stem}: no search box"
    if stem != "index":
        assert info["prev_next"] >= 1 and info["toc"] >= 1, f"{stem}: no previous/next links or no table of contents"
    if _exports(stem) and stem != "99_package":
        assert info["api"] == 1, f"{stem}: no API reference"
    bad = _check_links(info["links"], server, _LINK_CACHE)
    assert not bad, f"{stem}: broken internal links:\n" + "\n".join(bad)


@needs_book
def test_screenshots_of_autograd_and_a_keras_chapter(visits, shots):
    stems = _screenshot_stems()
    assert len(stems) == 2 and stems[0].endswith("_autograd") and "keras" in stems[1], stems
    for s in stems:
        png = shots / f"{s}.png"
        assert png.is_file() and png.stat().st_size > 20_000, f"no screenshot of {s} (or a blank one) in {shots}"


@needs_book
def test_search_box_finds_a_chapter(server, browser):
    page = browser.new_page()
    try:
        page.goto(server + "index.html", wait_until="load")
        page.locator("label.md-search__icon, .md-search__input").first.click()
        page.locator("input.md-search__input").fill("gradcheck")
        page.wait_for_selector(".md-search-result__item", timeout=30_000)
        hits = page.locator(".md-search-result__item a").evaluate_all("els => els.map(e => e.href)")
    finally:
        page.close()
    assert any(re.search(r"02b?_(autograd|gradcheck)\.html", h) for h in hits), hits
