"""The tree's own rules: every module has a test of its own or a README line saying which
end-to-end test covers it, and no two modules of ca/ import each other in a cycle."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ca"
COVERAGE_HEADING = "### Test coverage by module"


def modules_needing_tests(root: Path = REPO) -> list[str]:
    """Every module of ca/ as a path relative to the repository, generated code and package files aside."""
    return sorted(
        path.relative_to(root).as_posix()
        for path in (root / "ca").rglob("*.py")
        if "_proto" not in path.parts and path.name not in ("__init__.py", "__main__.py")
    )


def has_own_test(module: str, root: Path = REPO) -> bool:
    """ca/<package>/<module>.py is tested by tests/<package>/test_<module>*.py."""
    path = Path(module)
    test_dir = root / "tests" / path.parent.relative_to("ca")
    return any(test_dir.glob(f"test_{path.stem}*.py"))


def readme_coverage_lines(readme: str) -> list[str]:
    """The module paths named in the README's "Test coverage by module" section."""
    start = readme.index(COVERAGE_HEADING) + len(COVERAGE_HEADING)
    following = re.search(r"^#{1,3} ", readme[start:], re.MULTILINE)
    section = readme[start : start + following.start()] if following else readme[start:]
    return re.findall(r"^- `(ca/[\w/]+\.py)`", section, re.MULTILINE)


def test_every_module_has_a_unit_test_or_a_readme_line_naming_its_end_to_end_test() -> None:
    listed = set(readme_coverage_lines((REPO / "README.md").read_text()))
    modules = modules_needing_tests()
    untested = [m for m in modules if not has_own_test(m) and m not in listed]
    assert not untested, (
        f"modules with neither tests/<package>/test_<module>.py nor a line in README's "
        f"'{COVERAGE_HEADING}': {', '.join(untested)}"
    )
    gone = sorted(listed - set(modules))
    assert not gone, f"README's '{COVERAGE_HEADING}' names modules that do not exist: {', '.join(gone)}"


def import_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, or of one importing itself
    (Tarjan's algorithm, iterative so that a deep package cannot exhaust the stack)."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph.get(start, ())))]
        index[start] = lowlink[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            if successors:
                successor = successors.pop(0)
                if successor not in index:
                    index[successor] = lowlink[successor] = counter
                    counter += 1
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, sorted(graph.get(successor, ()))))
                elif successor in on_stack:
                    lowlink[node] = min(lowlink[node], index[successor])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                lowlink[parent] = min(lowlink[parent], lowlink[node])
            if lowlink[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    cycles.append(sorted(component))
    return sorted(cycles)


def import_graph(package: str) -> dict[str, set[str]]:
    """Which modules of the package each module imports, imports inside functions included."""
    built = grimp.build_graph(package, cache_dir=None)
    return {module: set(built.find_modules_directly_imported_by(module)) for module in built.modules}


def test_no_import_cycle_between_modules_of_ca() -> None:
    cycles = import_cycles(import_graph("ca"))
    assert not cycles, "modules importing each other in a cycle: " + "; ".join(
        " <-> ".join(cycle) for cycle in cycles
    )


def test_the_cycle_finder_names_every_cycle_and_nothing_else() -> None:
    graph = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},  # a -> b -> c -> a
        "d": {"e"},
        "e": set(),
        "f": {"f"},  # a module importing itself
        "g": {"h"},
        "h": {"g", "e"},
        "i": {"missing"},  # an edge to a module outside the graph
    }
    assert import_cycles(graph) == [["a", "b", "c"], ["f"], ["g", "h"]]
    assert import_cycles({"x": {"y"}, "y": {"z"}, "z": set()}) == []


def test_the_cycle_check_sees_a_cycle_made_by_an_import_inside_a_function(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toy = tmp_path / "toy_cycle"
    toy.mkdir()
    (toy / "__init__.py").write_text("")
    (toy / "first.py").write_text("from toy_cycle import second\n")
    (toy / "second.py").write_text("def late():\n    from toy_cycle import first\n    return first\n")
    (toy / "alone.py").write_text("import json\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles(import_graph("toy_cycle")) == [["toy_cycle.first", "toy_cycle.second"]]


def test_the_readme_section_is_read_as_module_paths() -> None:
    readme = (
        "## Layout\n\ntext\n\n### Test coverage by module\n\nintro naming `ca/not/a_line.py`\n\n"
        "- `ca/x/y.py`: `tests/x/test_z.py`, because it runs.\n- `ca/errors.py`: every test.\n\n"
        "## Next\n\n- `ca/after/section.py`: not in it.\n"
    )
    assert readme_coverage_lines(readme) == ["ca/x/y.py", "ca/errors.py"]
