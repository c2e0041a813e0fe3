#!/usr/bin/env python
"""The book's reading map, read from the notebooks themselves: chapters, titles, modules, run times, prerequisites.

    python tools/chapter_graph.py table      # print the front page's chapter tables (Markdown)
    python tools/chapter_graph.py index      # write them into nbs/index.ipynb (the cell that starts "## The chapters")
    python tools/chapter_graph.py edges      # print the prerequisite edges, and imports of later chapters
    python tools/chapter_graph.py measure    # execute every chapter once, store the run times in RUN_SECONDS below

A chapter's prerequisites are derived from its code: every `neuralbook.*` module it imports (`from neuralbook.nn
import Linear`, `from neuralbook import functional as F`, `nb.optim.SGD`, `nb.tensor`) maps to the chapter whose
`#| default_exp` exports that module; the edges are then reduced transitively (a -> c is dropped when a -> b -> c),
so the figure shows what to read just before. The front page (nbs/index.ipynb) imports `draw` from here.
"""
from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
PARTS = {"1_learning": "I · Learning from scratch", "2_architectures": "II · Architectures",
         "3_large_models": "III · Large models and applications", "4_engineering": "IV · Engineering",
         "5_keras": "V · The Keras API, layer by layer"}
# Edges of ideas that no import shows (drawn dashed): what to read before, though no code is shared.
IDEA_EDGES = [("01_neuron", "02_autograd")]

# CPU seconds to execute each chapter once (nbval's cells: `#| slow` / `#| cuda` / `#| eval: false` skipped), written
# by `python tools/chapter_graph.py measure` on a loaded 2-core machine: upper bounds. BEGIN RUN_SECONDS
RUN_SECONDS = {"01_neuron": 3.0, "02_autograd": 4.6, "02b_gradcheck": 0.7, "03_functional": 3.3,
               "03a_activations": 1.9, "03b_tensor_methods": 3.5, "04_nn": 4.9, "05_losses": 6.4, "06_data": 4.4,
               "06b_datasets": 8.8, "07_optim": 5.0, "07b_lr_scheduler": 3.6, "08_regularization": 6.6,
               "09_metrics": 4.1, "10_learner": 3.0, "10b_callbacks": 5.9, "10c_hooks": 2.8, "11_keras": 6.1,
               "solutions_1": 5.1, "12_conv": 9.0, "12a_conv1d": 1.4, "12b_conv_fast": 2.1, "13_norm": 4.9,
               "14_resnet": 8.2, "15_conv_transpose": 1.1, "16_rnn": 4.4, "17_attention": 5.1, "18_gpt": 19.9,
               "solutions_2": 0.9, "19_zoo": 1.1, "20_finetune": 2.7, "21_torch_import": 3.0, "22_lora": 5.0,
               "23_text": 1.2, "24_pretrained": 50.7, "25_images": 35.1, "26_speech": 24.5, "27_recommend": 10.6,
               "28_generate": 13.8, "solutions_3": 0.8, "29_backend": 1.6, "30_io": 1.2, "31_cuda": 1.6,
               "31b_cuda_twins": 17.1, "32_cuda_emu": 1.2, "32b_emulated_cupy": 2.7, "33_amp": 4.7,
               "34_distributed": 1.7, "35_cli": 2.9, "35b_cli_finetune": 0.7, "99_package": 0.7, "solutions_4": 0.6,
               "36_keras_1_backend": 0.7, "36_keras_1b_config": 0.6, "36_keras_1c_mixed_precision": 0.7,
               "36_keras_2_activations": 0.7, "36_keras_3_initializers": 0.7, "36_keras_4_regularizers": 0.7,
               "36_keras_5_layer": 0.8, "36_keras_6_core": 0.7, "36_keras_7_merging": 0.7,
               "36_keras_8_reshaping": 0.8, "36_keras_8b_preprocessing": 0.7, "36_keras_9_layers": 0.7,
               "37_keras_ops": 1.3, "38_keras_1_losses": 0.8, "38_keras_2_metrics": 0.8,
               "38_keras_2b_schedules": 0.7, "38_keras_3_optimizers": 0.7, "38_keras_4_callbacks": 0.6,
               "38_keras_5_compile_utils": 0.7, "38_keras_6_data_adapter": 0.6, "38_keras_6b_steps": 0.7,
               "38_keras_7_trainer": 0.7, "39_keras_1_functional": 0.6, "39_keras_2_model": 1.0,
               "39_keras_3_sequential": 0.6, "39_keras_4_saving": 0.7, "39_keras_5_models": 0.6,
               "39_keras_6_utils": 0.6, "39_keras_8_compat": 1.2, "40_keras_conv": 0.8, "40_keras_norm": 0.7,
               "40_keras_pool": 5.1, "41_keras_attention": 1.4, "41_keras_rnn": 2.1, "solutions_5": 0.7}
# END RUN_SECONDS


def _cells(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))["cells"]


def _src(cell):
    s = cell["source"]
    return "".join(s) if isinstance(s, list) else s


def notebooks(nbs: Path = NBS) -> list[Path]:
    """Every chapter in reading order: the parts `nbs/N_name/` in the order of N, each sorted by file name."""
    return sorted(p for p in Path(nbs).glob("[0-9]*_*/*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def chapter_info(path: Path) -> dict:
    """Number, title, part, exported module and the `neuralbook` names the code cells use, of one notebook."""
    cells = _cells(path)
    head = next((_src(c).strip().splitlines()[0] for c in cells if c["cell_type"] == "markdown" and _src(c).strip()), "")
    m = re.match(r"#\s+(\S+)\s+·\s+(.+)", head)
    number, title = (m.group(1), m.group(2).strip()) if m else ("", head.lstrip("# ").strip())
    module, uses = None, set()
    for c in cells:
        if c["cell_type"] != "code":
            continue
        src = _src(c)
        d = re.search(r"^#\|\s*default_exp\s+(\S+)", src, re.MULTILINE)
        if d:
            module = re.sub(r"(^|\.)__init__$", "", d.group(1)) or "__init__"
        uses |= _neuralbook_names(src)
    return {"stem": path.stem, "path": path, "part": path.parent.name, "number": number, "title": title,
            "module": module, "uses": uses}


def _neuralbook_names(src: str) -> set[str]:
    """Dotted `neuralbook...` names a cell imports or reaches through an alias (`nb.optim.SGD`, `F.relu`)."""
    code = "\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("%", "!")))
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    aliases, names = {"nb": "neuralbook"}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "neuralbook":
                    names.add(a.name)
                    aliases[a.asname or "neuralbook"] = a.name if a.asname else "neuralbook"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "neuralbook":
            for a in node.names:
                names.add(f"{node.module}.{a.name}")
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and not isinstance(getattr(node, "_parent", None), ast.Attribute):
            chain = []
            cur = node
            while isinstance(cur, ast.Attribute):
                chain.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id in aliases and aliases[cur.id].startswith("neuralbook"):
                names.add(".".join([aliases[cur.id], *reversed(chain)]))
    return names


def _resolve(name: str, modules: dict[str, str]) -> str | None:
    """The chapter module (a key of `modules`) that defines the dotted name `neuralbook.x.y`, or None.

    Imports the package and follows the attributes: `nb.nn.Conv2d` is attached to `nn` by the package but defined
    in `conv`, whose chapter is the prerequisite. Names that are not classes or functions count for their module."""
    import importlib
    parts, obj, owner = name.split("."), None, None
    for n in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:n]))
        except Exception:  # noqa: BLE001, S112 (a module that does not import, or a name that is no module)
            continue
        owner = obj.__name__
        for attr in parts[n:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
            defined = obj.__name__ if hasattr(obj, "__path__") or type(obj).__name__ == "module" else getattr(obj, "__module__", None)
            if isinstance(defined, str) and defined.removeprefix("neuralbook.") in modules:
                owner = defined
        break
    if owner is None:                                  # the package does not import: go by the name alone
        parts = name.split(".")[1:]
        owner = next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in modules), "")
    mod = owner.removeprefix("neuralbook.")
    return mod if mod in modules else None


def chapters(nbs: Path = NBS) -> list[dict]:
    """Every chapter's info (`chapter_info`) in reading order, with `needs`: the chapters whose modules it uses."""
    infos = [chapter_info(p) for p in notebooks(nbs)]
    order = {c["stem"]: i for i, c in enumerate(infos)}
    modules = {c["module"]: c["stem"] for c in infos if c["module"]}
    for c in infos:
        mods = {_resolve(n, modules) for n in c["uses"]} - {None, "__init__"}
        c["needs"] = sorted({modules[m] for m in mods} - {c["stem"]}, key=order.get)
    return infos


def prerequisites(infos: list[dict]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(direct, later): per chapter, its prerequisites among EARLIER chapters after transitive reduction (a -> c is
    dropped when c is reached through another prerequisite b), and the LATER chapters whose code it uses (the
    infrastructure of Part IV mostly: a reader need not read those first). Solutions notebooks are left out."""
    order = {c["stem"]: i for i, c in enumerate(infos)}
    keep = {c["stem"] for c in infos if not c["stem"].startswith("solutions")}
    needs = {c["stem"]: [n for n in c["needs"] if n in keep] for c in infos if c["stem"] in keep}
    for a, b in IDEA_EDGES:
        if a in needs and b in needs and a not in needs[b]:
            needs[b].append(a)
    earlier = {s: [n for n in ns if order[n] < order[s]] for s, ns in needs.items()}
    later = {s: [n for n in ns if order[n] > order[s]] for s, ns in needs.items()}
    ancestors: dict[str, set[str]] = {}
    for s in sorted(earlier, key=order.get):          # parents come first in reading order
        ancestors[s] = set().union(*({p} | ancestors[p] for p in earlier[s])) if earlier[s] else set()
    direct = {s: [p for p in ps if not any(p in ancestors[q] for q in ps if q != p)] for s, ps in earlier.items()}
    return direct, {s: ls for s, ls in later.items() if ls}


def layout(stems: list[str], direct: dict[str, list[str]]):
    """Positions for a layered drawing (Sugiyama's method, simplified): `(pos, routes)`. pos[stem] = (x, row), where
    row = the longest chain of prerequisites above it; an edge that skips rows passes through one invisible point per
    row it crosses, routes[(prereq, stem)] = those points; each row is ordered by the mean x of its nodes' parents
    (a few sweeps of the barycentre heuristic), which keeps edges short and crossings few."""
    row = {}
    for s in stems:                                    # stems are in reading order: parents first
        row[s] = 1 + max((row[p] for p in direct[s] if p in row), default=-1)
    parents = {s: [p for p in direct[s] if p in row] for s in stems}
    routes = {}
    for s in stems:                                    # a chain of dummy nodes for every long edge
        for p in list(parents[s]):
            if row[s] - row[p] > 1:
                chain = [("~", p, s, r) for r in range(row[p] + 1, row[s])]
                routes[(p, s)] = chain
                for prev, d in zip([p] + chain, chain):
                    row[d], parents[d] = d[3], [prev]
                parents[s] = [chain[-1] if q == p else q for q in parents[s]]
    rows: dict[int, list] = {}
    for n, r in row.items():
        rows.setdefault(r, []).append(n)
    children = {n: [] for n in row}
    for n, ps in parents.items():
        for q in ps:
            children[q].append(n)
    width = max(len(v) for v in rows.values())
    x = {n: float(i) for r in rows.values() for i, n in enumerate(r)}
    for sweep in range(8):                             # down by parents, up by children, in turn
        near = parents if sweep % 2 == 0 else children
        for r in sorted(rows, reverse=sweep % 2 == 1):
            bary = {n: (sum(x[q] for q in near[n]) / len(near[n]) if near[n] else x[n]) for n in rows[r]}
            rows[r].sort(key=lambda n: bary[n])
            off = (width - len(rows[r])) / 2
            for i, n in enumerate(rows[r]):
                x[n] = off + i
    pos = {s: (x[s], row[s]) for s in stems}
    return pos, {e: [(x[d], row[d]) for d in chain] for e, chain in routes.items()}


def _short(title: str, width: int = 17) -> str:
    """A chapter title cut to its first clause and wrapped into lines of about `width` characters."""
    import textwrap
    t = re.split(r":|,| — |; ", title.replace("`", ""))[0].strip()
    return "\n".join(textwrap.wrap(t, width))


def draw(parts=("1_learning", "2_architectures"), ax=None):
    """Draw the prerequisite graph of the chapters in `parts` as a layered DAG (prerequisites above their chapters;
    arrows point to the chapter that needs them; dashed: an idea that no import shows). Returns the axes."""
    import matplotlib.pyplot as plt
    infos = chapters()
    direct, _ = prerequisites(infos)
    info = {c["stem"]: c for c in infos}
    stems = [c["stem"] for c in infos if c["part"] in parts and c["stem"] in direct]
    pos, routes = layout(stems, direct)
    allx = [x for x, _ in pos.values()] + [x for pts in routes.values() for x, _ in pts]
    width = max(allx) + 1
    nrows = max(r for _, r in pos.values()) + 1
    if ax is None:
        _, ax = plt.subplots(figsize=(1.9 * width + 1, 1.05 * nrows + 1.2))
    colors = {p: c for p, c in zip(PARTS, ["#cfe2f3", "#d9ead3", "#fce5cd", "#eeeeee", "#fff2cc"])}
    label = {s: f"{info[s]['number']}\n{_short(info[s]['title'])}" for s in stems}
    half = {s: 0.1 + 0.066 * (label[s].count("\n") + 1) for s in stems}   # half a box's height, in rows
    for s in stems:
        x, r = pos[s]
        for p in direct[s]:
            if p in pos:
                pts = [pos[p]] + routes.get((p, s), []) + [pos[s]]
                xs, ys = [q[0] for q in pts], [-q[1] for q in pts]
                ys[0] -= half[p]
                ls = "--" if (p, s) in IDEA_EDGES else "-"
                ax.plot(xs[:-1], ys[:-1], color="0.45", lw=1.0, ls=ls, zorder=1)
                ax.annotate("", xy=(xs[-1], ys[-1] + half[s]), xytext=(xs[-2], ys[-2]), zorder=1,
                            arrowprops={"arrowstyle": "->", "color": "0.45", "lw": 1.0, "ls": ls, "shrinkA": 0, "shrinkB": 0})
        ax.text(x, -r, label[s], ha="center", va="center", fontsize=8,
                zorder=2, bbox={"boxstyle": "round,pad=0.3", "fc": colors.get(info[s]["part"], "white"), "ec": "0.3"})
    for p in parts:
        ax.plot([], [], "s", ms=10, color=colors[p], mec="0.3", label=f"Part {PARTS[p]}")
    ax.legend(loc="lower left", fontsize=9, frameon=False)
    ax.set(xlim=(-0.7, width - 0.3), ylim=(-nrows + 0.4, 0.6))
    ax.axis("off")
    return ax


def _runs_in(stem: str) -> str:
    """The measured run time, rounded UP (to 1 s below 10 s, to 5 s below a minute, then to 10 s)."""
    s = RUN_SECONDS.get(stem)
    if s is None:
        return "–"
    step = 1 if s < 10 else 5 if s < 60 else 10
    return f"{step * -int(-s // step)} s"


def table_markdown(nbs: Path = NBS) -> str:
    """The front page's chapter tables, one per part: number, title (a link), module, run time."""
    infos = chapters(nbs)
    out = ["## The chapters", "",
           ("Read the parts in order; within a part, a chapter uses only the chapters before it (the graph below "
            "shows which). *Runs in*: the CPU time to execute the chapter once (its `#| slow` cells skipped), measured "
            "on a loaded 2-core machine and rounded up: upper bounds for an idle machine. This table is generated from the notebooks by "
            "`python tools/chapter_graph.py index`.")]
    for part, name in PARTS.items():
        rows = [c for c in infos if c["part"] == part]
        if not rows:
            continue
        total = sum(RUN_SECONDS.get(c["stem"], 0) for c in rows)
        out += ["", f"### Part {name} (`nbs/{part}`, {10 * -int(-total // 10)} s in all)", "",
                "| # | chapter | module | runs in |", "|---|---|---|---|"]
        for c in rows:
            title = c["title"].replace("|", "\\|")
            mod = f"`{c['module']}`" if c["module"] else "–"
            out.append(f"| {c['number'] or '–'} | [{title}]({part}/{c['stem']}.ipynb) | {mod} | {_runs_in(c['stem'])} |")
    return "\n".join(out) + "\n"


def write_index(path: Path = NBS / "index.ipynb") -> None:
    """Replace the markdown cell of the front page that starts with '## The chapters' by `table_markdown()`."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    cell = next(c for c in nb["cells"] if c["cell_type"] == "markdown" and _src(c).startswith("## The chapters"))
    cell["source"] = table_markdown().splitlines(keepends=True)
    Path(path).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


_PROBE = ("import resource as _r\n_s, _c = _r.getrusage(_r.RUSAGE_SELF), _r.getrusage(_r.RUSAGE_CHILDREN)\n"
          "print(_s.ru_utime + _s.ru_stime + _c.ru_utime + _c.ru_stime)")


def measure(stems=()) -> dict[str, float]:
    """Execute chapters (all, or those named) once with a real kernel, skipping the cells nbval skips, and return
    {stem: CPU seconds} (user + system time of the kernel and its children) of those that ran without error. CPU time
    rather than wall-clock time, because the machine is shared: on an idle machine a chapter's wall time is about its
    CPU time (less where BLAS uses both cores). Stored into RUN_SECONDS in this file, keeping the smaller of an old
    and a new value (noise from other processes only adds)."""
    import nbformat
    from nbclient import NotebookClient
    sys.path.insert(0, str(NBS))
    from conftest import _skip_reason
    got = {}
    for p in notebooks():
        if stems and p.stem not in stems:
            continue
        nb = nbformat.read(p, as_version=4)
        client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(p.parent)}})
        try:
            with client.setup_kernel():
                for i, cell in enumerate(nb.cells):
                    if cell.cell_type == "code" and not _skip_reason(cell.source):
                        client.execute_cell(cell, i)
                nb.cells.append(nbformat.v4.new_code_cell(_PROBE))
                client.execute_cell(nb.cells[-1], len(nb.cells) - 1)
                cpu = float(nb.cells[-1].outputs[-1]["text"])
        except Exception as e:  # noqa: BLE001 (report and go on with the next chapter)
            print(f"{p.stem}: failed ({type(e).__name__}), not recorded", file=sys.stderr)
            continue
        got[p.stem] = round(min(cpu, RUN_SECONDS.get(p.stem, cpu)), 1)
        print(f"{p.stem}: {cpu:.1f} s CPU", file=sys.stderr)
        _store({**RUN_SECONDS, **got})
    return got


def _store(seconds: dict[str, float]) -> None:
    me = Path(__file__)
    text = me.read_text(encoding="utf-8")
    order = {p.stem: i for i, p in enumerate(notebooks())}
    items = sorted(seconds.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    lines, cur = [], "RUN_SECONDS = {"
    for k, v in items:
        it = f"{json.dumps(k)}: {v}, "
        if len(cur) + len(it) > 118:
            lines.append(cur.rstrip())
            cur = "               "
        cur += it
    lines.append(cur.rstrip().rstrip(",") + "}")
    a, b = text.index("RUN_SECONDS = {"), text.index("# END RUN_SECONDS")
    me.write_text(text[:a] + "\n".join(lines) + "\n" + text[b:], encoding="utf-8")


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["table", "index", "edges", "measure"])
    ap.add_argument("stems", nargs="*", help="measure: only these chapters (file stems)")
    args = ap.parse_args(argv)
    if args.command == "table":
        print(table_markdown(), end="")
    elif args.command == "index":
        write_index()
    elif args.command == "edges":
        direct, later = prerequisites(chapters())
        for s, ps in direct.items():
            print(f"{s}: {', '.join(ps) or '-'}" + (f"   (uses later: {', '.join(later[s])})" if s in later else ""))
    else:
        measure(args.stems)


if __name__ == "__main__":
    main()
