"""docs/parameters-status.md against the built parameter tree: a row per node, statuses that hold, tests that exist.

A node added without a row, a node no code reads whose doc does not say why, or a row naming a test that is
gone fails here; `.venv/bin/python docs/make_parameters_status.py` rewrites the page (then check it by hand).
"""

import re
import sys
from pathlib import Path

import pytest

from difframe.manager import PluginManager
from difframe.params import ParamTree

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs"))
import make_parameters_status as status_page  # noqa: E402

#: rows that say "honoured" but name no test: the untested part of the contract, which may only shrink
UNTESTED_AT_MOST = 0


@pytest.fixture(scope="module")
def tree():
    return ParamTree.build(PluginManager())


@pytest.fixture(scope="module")
def rows():
    table = {}
    for line in status_page.PAGE.read_text().splitlines():
        m = re.match(r"\| `([^`]+)` \| (.+?) \| (.+) \|$", line)
        if m:
            assert m.group(1) not in table, f"two rows for {m.group(1)}"
            table[m.group(1)] = (m.group(2), re.findall(r"`([^`]+)`", m.group(3)))
    return table


def test_every_node_has_one_row_and_every_row_a_node(tree, rows):
    missing, stale = sorted(set(tree.nodes) - set(rows)), sorted(set(rows) - set(tree.nodes))
    assert not missing, f"nodes without a row in docs/parameters-status.md (run docs/make_parameters_status.py): " \
                        f"{missing}"
    assert not stale, f"rows for nodes the tree no longer has: {stale}"


def test_statuses_hold_and_no_node_is_silently_unread(tree, rows):
    sources = status_page.code_sources()
    live = {path: status_page.status(path, node, sources) for path, node in tree.nodes.items()}
    unread = sorted(p for p, s in live.items() if s == status_page.UNREAD)
    assert not unread, f"no code reads these nodes and their docs do not say why: {unread}"
    wrong = {p: (rows[p][0], s) for p, s in live.items() if p in rows and rows[p][0] != s}  # missing: above
    assert not wrong, f"rows whose status changed (page, now): {wrong}"


def test_named_tests_exist(rows):
    for path, (_, tests) in rows.items():
        for test in tests:
            file, _, name = test.partition("::")
            source = (ROOT / file).read_text()
            assert not name or re.search(rf"(?m)^(?:def|class) {re.escape(name)}\b", source), (path, test)


def test_untested_nodes_do_not_grow(rows):
    untested = sorted(p for p, (s, tests) in rows.items() if s == "honoured" and not tests)
    assert len(untested) <= UNTESTED_AT_MOST, f"{len(untested)} honoured nodes without a test: {untested}"


def test_the_status_of_a_node_follows_its_doc_and_the_code():
    """The rules the page is made by, on nodes whose answer is known."""
    from difframe.params import Node

    sources = {"core/x.py": 'value = p.get("thickness")\nNODES = {"ghost": Parameter(1)}\n'}
    assert status_page.status("scan.sample.process.thickness", Node("scan.sample.process.thickness", ("float",),
                                                                    1e-6, "Thickness"), sources) == "honoured"
    assert status_page.status("a.ghost", Node("a.ghost", ("int",), 1, "Ghost"), sources) == status_page.UNREAD
    said = Node("a.ghost", ("int",), 1, "Ghost", "Not read: nothing here needs it.")
    assert status_page.status("a.ghost", said, sources) == "not read (doc says why)"
    assert status_page.status("scan.data.simulation.sample.zoom", said, sources) == \
        "simulation copy of `scan.sample.zoom`"
