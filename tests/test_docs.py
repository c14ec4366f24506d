"""The documentation: the MkDocs site (built with --strict, its CLI and API pages made from the
code), the README that points into it, and `distft train --help`, grouped as the site is."""
from __future__ import annotations

import ast
import dataclasses
import os
import re
import sys

import pytest
import yaml

from conftest import distft, run
from distft.config import GROUPS, TrainConfig, option_groups, option_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = [option_name(f.name) for f in dataclasses.fields(TrainConfig)]


def nav_pages() -> list[str]:
    """The markdown files of mkdocs.yml's nav, in order."""
    with open(os.path.join(ROOT, "mkdocs.yml")) as f:
        config = yaml.safe_load(f)

    def walk(items):
        for item in items:
            for value in item.values():
                yield from walk(value) if isinstance(value, list) else [value]

    return list(walk(config["nav"]))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> str:
    """The site as `mkdocs build --strict` writes it: any warning (a broken link or anchor, a
    page left out of the nav, a missing image) fails the build."""
    out = str(tmp_path_factory.mktemp("site"))
    result = run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                  os.path.join(ROOT, "mkdocs.yml"), "--site-dir", out], timeout=300, cwd=ROOT,
                 env={"NO_MKDOCS_2_WARNING": "1"})
    assert result.code == 0, result.out[-4000:]
    return out


def page_html(site: str, page: str) -> str:
    name = page[:-len(".md")]
    path = os.path.join(site, "index.html" if name == "index" else os.path.join(name, "index.html"))
    with open(path) as f:
        return f.read()


def test_the_site_builds_strictly_with_every_page_of_the_nav(site):
    pages = nav_pages()
    assert len(pages) == len(set(pages))
    for page in pages:
        assert os.path.exists(os.path.join(ROOT, "docs", page)), page
        assert "<h1" in page_html(site, page), page
    on_disk = {p for p in os.listdir(os.path.join(ROOT, "docs")) if p.endswith(".md")}
    assert on_disk == set(pages), "every docs/*.md page is in the nav, and only those"


def test_the_cli_reference_has_every_option_once_under_its_group(site):
    html = page_html(site, "cli.md")
    starts = []
    for heading, fields in option_groups():
        start = html.index(f">{heading}<")  # the group's heading
        starts.append(start)
        for f in fields:
            flag = f"<code>--{option_name(f.name)}</code>"
            assert html.count(flag) == 1, flag
            assert html.index(flag) > start, (flag, heading)
    assert starts == sorted(starts), "the groups in GROUPS' order"
    for (heading, fields), end in zip(option_groups()[:-1], starts[1:]):
        for f in fields:
            assert html.index(f"<code>--{option_name(f.name)}</code>") < end, (f.name, heading)


def test_the_api_page_documents_every_public_name(site):
    with open(os.path.join(ROOT, "distft", "__init__.py")) as f:
        init = ast.parse(f.read())
    exported = next(ast.literal_eval(n.value) for n in init.body if isinstance(n, ast.Assign)
                    and any(getattr(t, "id", "") == "__all__" for t in n.targets))
    html = page_html(site, "api.md")
    names = [n for n in exported if not n.startswith("__")]
    assert {"train", "evaluate", "predict", "inspect", "shard"} <= set(names)
    for name in names:
        assert f">distft.{name}<" in html, name
    # docstrings, not only names: train's, from distft/api.py
    assert "Fine-tune a model on this worker" in html


def test_the_readme_is_short_and_points_at_pages_that_exist():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert len(readme.splitlines()) <= 200
    linked = set(re.findall(r"\]\(docs/([^)#\s]+\.md)(?:#[^)]*)?\)", readme))
    for page in linked:
        assert os.path.exists(os.path.join(ROOT, "docs", page)), page
    missing = set(nav_pages()) - linked
    assert not missing, f"the README links to no page {sorted(missing)}"
    assert "make demo" in readme and "make test" in readme  # the two commands; CI runs make test


def test_the_screenshots_are_the_ones_docs_screenshots_sh_takes():
    """Each TensorBoard image on a page is a screenshot that docs/screenshots.sh takes of a real
    run, and each one it takes is shown."""
    with open(os.path.join(ROOT, "docs", "screenshots.sh")) as f:
        taken = set(re.findall(r"^shot (\S+) ", f.read(), re.M))
    shown = set()
    for page in nav_pages():
        with open(os.path.join(ROOT, "docs", page)) as f:
            shown |= set(re.findall(r"!\[[^]]*\]\(images/([^)]+)\.png\)", f.read()))
    assert taken and shown == taken
    for name in taken:
        assert os.path.getsize(os.path.join(ROOT, "docs", "images", f"{name}.png")) > 10_000, name


def test_train_help_lists_every_flag_once_under_its_group():
    result = distft(["train", "--help"], timeout=120)
    assert result.code == 0, result.out[-3000:]
    lines = result.lines
    heading_at = []
    for heading in GROUPS.values():
        found = [i for i, l in enumerate(lines) if l.strip() == f"{heading}:"]
        assert len(found) == 1, (heading, result.out)
        heading_at.append(found[0])
    assert heading_at == sorted(heading_at), "the groups in GROUPS' order"
    bounds = dict(zip(GROUPS, zip(heading_at, heading_at[1:] + [len(lines)])))
    for f in dataclasses.fields(TrainConfig):
        flag = option_name(f.name)
        found = [i for i, l in enumerate(lines) if re.match(rf"\s+--{flag}: ", l)]
        assert len(found) == 1, (flag, result.out)
        start, end = bounds[f.metadata["group"]]
        assert start < found[0] < end, (flag, f.metadata["group"])
        if f.default not in (None, ""):
            assert lines[found[0]].endswith(f"(default {f.default})"), lines[found[0]]


def test_every_option_has_a_known_group():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("group") in GROUPS, f.name
        assert f.metadata.get("help"), f.name
    grouped = [option_name(f.name) for _, fields in option_groups() for f in fields]
    assert sorted(grouped) == sorted(FLAGS)
    assert all(fields for _, fields in option_groups()), "no empty group"
