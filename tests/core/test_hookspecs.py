"""Every hook is documented with an example and exercised by some test (as datasette checks)."""

import inspect
from pathlib import Path

import pytest

from difframe.hookspecs import DifframeHookSpecs
from difframe.types import SPEC_KINDS

TESTS = Path(__file__).resolve().parents[1]
HOOKS = [name for name, _ in inspect.getmembers(DifframeHookSpecs, inspect.isfunction) if name.startswith("difframe_")]


def test_registration_hooks_cover_every_kind():
    assert {hook for hook, _ in SPEC_KINDS.values()} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_an_example(hook):
    doc = inspect.getdoc(getattr(DifframeHookSpecs, hook)) or ""
    assert len(doc.splitlines()) >= 3 and ("Example" in doc or "example" in doc), hook


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_used_by_a_test(hook):
    here = Path(__file__).resolve()
    users = [p for p in TESTS.rglob("*.py") if p != here and hook in p.read_text(encoding="utf-8")]
    assert users, f"no test exercises {hook}"
