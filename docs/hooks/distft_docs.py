"""MkDocs hook: the pages that are made from the code, so that they cannot go stale.

A page's markdown may hold these markers (each alone on a line):

    <!-- cli-reference -->          every TrainConfig field as `--flag`, type, default and help,
                                    one table per group (distft.config.option_groups, the same
                                    groups as `distft train --help`)
    <!-- api-reference -->          each public name of `distft` (its __all__): a function's
                                    signature and docstring, a class's docstring and methods'
    <!-- include: PATH -->          a markdown file of the repository (PATH from its top), less
                                    its first-level title

distft.config imports no TensorFlow, and the API's sources are read with `ast`, not imported,
so the hook is quick.
"""
from __future__ import annotations

import ast
import os
import re
import sys
import typing

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARKER = re.compile(r"^<!-- (cli-reference|api-reference|include: (\S+)) -->$", re.M)


def on_page_markdown(markdown: str, page, config, files) -> str:
    def replace(m: re.Match) -> str:
        if m.group(1) == "cli-reference":
            return cli_reference()
        if m.group(1) == "api-reference":
            return api_reference()
        return include(m.group(2))

    return gfm_blocks(MARKER.sub(replace, markdown))


def gfm_blocks(markdown: str) -> str:
    """The README's markdown as GitHub reads it: a blank line before a list or table that
    follows a paragraph or a code block at once (Python-Markdown would run them into the
    paragraph), and `\\|` in a table cell's code a plain | (Python-Markdown keeps code's pipes)."""
    out: list[str] = []
    fence = False
    for line in markdown.split("\n"):
        starts_block = re.match(r"(- |\* |\d+\. |\|)", line)
        if not fence and starts_block and out and out[-1].strip() and \
                not re.match(r"(\s*(- |\* |\d+\. |\|)|\s+\S|#)", out[-1]):
            out.append("")
        if line.startswith("```"):
            fence = not fence
        if not fence and line.startswith("|"):  # GitHub's `a\|b` in a table cell is a|b
            line = re.sub(r"`[^`]*`", lambda m: m.group(0).replace("\\|", "|"), line)
        out.append(line)
    return "\n".join(out)


def cli_reference() -> str:
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from distft.config import TrainConfig, option_groups, option_name

    hints = typing.get_type_hints(TrainConfig)
    out = []
    for heading, fields in option_groups():
        out += [f"## {heading}", "", "| flag | type | default | meaning |", "|---|---|---|---|"]
        for f in fields:
            default = "" if f.default in (None, "") else f"`{f.default}`"
            help_ = f.metadata.get("help", "").replace("|", "\\|")
            out.append(f"| `--{option_name(f.name)}` | {type_name(hints[f.name])} | {default} | "
                       f"{help_} |")
        out.append("")
    return "\n".join(out)


def type_name(hint) -> str:
    """`int`, `bool`, ...; `tuple` is a comma-separated list; Optional[X] is X, unset by default."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        hint = args[0]
    return {tuple: "list (a,b,...)"}.get(hint, getattr(hint, "__name__", str(hint)))


def api_reference() -> str:
    """Each name of `distft.__all__` (but __version__) where distft/__init__.py imports it from:
    a function's signature and docstring; a class's docstring and its public methods'."""
    init = ast.parse(read("distft/__init__.py"))
    exported = next(ast.literal_eval(n.value) for n in init.body if isinstance(n, ast.Assign)
                    and any(getattr(t, "id", "") == "__all__" for t in n.targets))
    source = {a.name: n.module for n in init.body if isinstance(n, ast.ImportFrom)
              for a in n.names}
    out = []
    for name in exported:
        if name.startswith("__"):
            continue
        module = source[name]
        tree = ast.parse(read(module.replace(".", "/") + ".py"))
        node = next(n for n in tree.body if getattr(n, "name", None) == name)
        if isinstance(node, ast.ClassDef):
            out += [f"## distft.{name}", "", f"`class {name}` (`{module}`)", "",
                    ast.get_docstring(node) or "", ""]
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and not item.name.startswith("_") and \
                        "property" not in map(ast.unparse, item.decorator_list):
                    out += [f"### {name}.{item.name}", "", signature(item), "",
                            ast.get_docstring(item) or "", ""]
        else:
            out += [f"## distft.{name}", "", signature(node), "", ast.get_docstring(node) or "", ""]
    return "\n".join(out)


def signature(node: ast.FunctionDef) -> str:
    """`def name(...)` as a code block, one parameter a line when it is long."""
    a = node.args
    def param(arg: ast.arg, default=None, prefix="") -> str:
        text = prefix + arg.arg + (f": {ast.unparse(arg.annotation)}" if arg.annotation else "")
        return text + (f" = {ast.unparse(default)}" if default is not None else "")
    positional = a.posonlyargs + a.args
    defaults = [None] * (len(positional) - len(a.defaults)) + a.defaults
    params = [param(p, d) for p, d in zip(positional, defaults)]
    if a.vararg:
        params.append(param(a.vararg, prefix="*"))
    elif a.kwonlyargs:
        params.append("*")
    params += [param(p, d) for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    if a.kwarg:
        params.append(param(a.kwarg, prefix="**"))
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    line = f"def {node.name}({', '.join(params)}){returns}"
    if len(line) > 90:
        line = f"def {node.name}(\n" + "".join(f"    {p},\n" for p in params) + f"){returns}"
    return f"```python\n{line}\n```"


def read(relpath: str) -> str:
    with open(os.path.join(ROOT, relpath)) as f:
        return f.read()


def include(relpath: str) -> str:
    return re.sub(r"\A# .*\n+", "", read(relpath))
