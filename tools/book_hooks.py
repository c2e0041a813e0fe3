"""MkDocs hook for tools/book.py: each page's table of contents is made from the headings that the page really has.

mkdocs-jupyter builds a notebook's table of contents from a Markdown conversion of the whole notebook, in which
printed outputs (a line of dashes under a line of text) turn into headings that the HTML page does not have, and two
headings with the same text get the same id. Here, after a page is rendered, duplicate heading ids are made unique
(`tensor`, `tensor_1`, ... as Python-Markdown does) and the table of contents is rebuilt from the h1-h3 headings of
the HTML, so that every entry links to an anchor that exists.

mkdocs-jupyter also inlines the same stylesheets (575 kB of notebook CSS) into every page; each large <style> block
is written once to assets/notebook/<hash>.css and linked instead, so pages are 0.6 MB smaller, the browser caches the
CSS, and the search indexer does not parse it 50 times.
"""
from __future__ import annotations

import hashlib
import html as _html
import re
from pathlib import Path

from mkdocs.structure.toc import get_toc

HEADING = re.compile(r'<h([1-6])([^>]*?)\sid="([^"]*)"([^>]*)>(.*?)</h\1>', re.DOTALL)
TOC_DEPTH = 3


def _text(inner: str) -> str:
    inner = re.sub(r'<a[^>]*class="anchor-link"[^>]*>.*?</a>', "", inner, flags=re.DOTALL)
    return _html.unescape(re.sub(r"<[^>]+>", "", inner)).strip()


def unique_ids(content: str) -> tuple[str, list[tuple[int, str, str]]]:
    """Rename repeated heading ids (and the heading's own anchor link); return the page and its headings."""
    seen: dict[str, int] = {}
    heads: list[tuple[int, str, str]] = []

    def fix(m):
        level, pre, hid, post, inner = int(m.group(1)), m.group(2), m.group(3), m.group(4), m.group(5)
        new = hid
        if hid in seen:
            seen[hid] += 1
            new = f"{hid}_{seen[hid]}"
            while new in seen:
                seen[hid] += 1
                new = f"{hid}_{seen[hid]}"
            inner = inner.replace(f'href="#{hid}"', f'href="#{new}"')
        seen.setdefault(new, 0)
        heads.append((level, new, _text(inner)))
        return f'<h{level}{pre} id="{new}"{post}>{inner}</h{level}>'

    return HEADING.sub(fix, content), heads


def toc_tokens(heads: list[tuple[int, str, str]], depth: int = TOC_DEPTH) -> list[dict]:
    """Nest (level, id, name) headings the way Python-Markdown's toc extension reports them."""
    root: list[dict] = []
    stack: list[dict] = []
    for level, hid, name in heads:
        if level > depth:
            continue
        tok = {"level": level, "id": hid, "name": name, "html": _html.escape(name), "children": [], "data-toc-label": ""}
        while stack and stack[-1]["level"] >= level:
            stack.pop()
        (stack[-1]["children"] if stack else root).append(tok)
        stack.append(tok)
    return root


STYLE = re.compile(r'<style type="text/css">(.*?)</style>', re.DOTALL)
SHARED_CSS_MIN = 2000  # characters: smaller <style> blocks stay inline


def share_styles(content: str, site_dir: str) -> str:
    def link(m):
        css = m.group(1)
        if len(css) < SHARED_CSS_MIN:
            return m.group(0)
        name = f"assets/notebook/{hashlib.sha1(css.encode()).hexdigest()[:12]}.css"
        path = Path(site_dir) / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(css, encoding="utf-8")
        return f'<link rel="stylesheet" href="{name}">'  # every page is at the top of the site
    return STYLE.sub(link, content)


def on_page_content(content, page, config, files, **kwargs):
    content = share_styles(content, config["site_dir"])
    content, heads = unique_ids(content)
    page.toc = get_toc(toc_tokens(heads))
    return content
