"""README.md's Layout section lists every module of the package, and nothing that is gone."""

from __future__ import annotations

import re

from tests.conftest import REPO


def layout_modules(readme: str) -> set[str]:
    """The ``clustr_aio/...`` paths of the Layout tree, from its indentation."""
    section = readme.split("## Layout\n", 1)[1]
    tree = section.split("```\n", 2)[1]
    paths: set[str] = set()
    stack: list[tuple[int, str]] = []
    for line in tree.splitlines():
        match = re.match(r"( *)(\S+\.py|\S+/)(?:\s|$)", line)
        if match is None:
            continue  # a continued description
        indent, name = len(match[1]), match[2]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "".join(part for _, part in stack) + name
        if name.endswith("/"):
            stack.append((indent, name))
        else:
            paths.add(path)
    return {path for path in paths if path.startswith("clustr_aio/")}


def test_the_layout_lists_every_module() -> None:
    package = REPO / "clustr_aio"
    actual = {
        str(path.relative_to(REPO))
        for path in package.rglob("*.py")
        if path.name != "__init__.py" and "__pycache__" not in path.parts
    }
    listed = layout_modules((REPO / "README.md").read_text())
    assert sorted(actual - listed) == [], "modules missing from README's Layout"
    assert sorted(listed - actual) == [], "README's Layout lists modules that do not exist"


def test_the_parser_reads_nesting() -> None:
    readme = "## Layout\n```\nclustr_aio/\n  a.py   x\n  sub/\n    b.py\n```\n"
    assert layout_modules(readme) == {"clustr_aio/a.py", "clustr_aio/sub/b.py"}
