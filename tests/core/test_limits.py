"""The memory budget: DIFFRAME_MEMORY_LIMIT's forms, the machine's available memory, refusals that name the size."""

import pytest

from difframe import limits
from difframe.errors import DataError, ParameterError, UsageError


@pytest.mark.parametrize("text, expected", [
    ("123", 123), ("512M", 512 * 2**20), ("8G", 8 * 2**30), ("1.5GiB", 3 * 2**29), ("2 tb", 2 * 2**40),
    ("1e9", 10**9), ("64k", 65536),
])
def test_sizes_parse(text, expected):
    assert limits.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-5G", "0", "8X", "1e30T"])
def test_bad_limits_name_the_variable(text, monkeypatch):
    monkeypatch.setenv("DIFFRAME_MEMORY_LIMIT", text or " ")
    with pytest.raises(UsageError, match="DIFFRAME_MEMORY_LIMIT"):
        limits.memory_budget()


def test_default_budget_is_what_the_machine_has(monkeypatch):
    monkeypatch.delenv("DIFFRAME_MEMORY_LIMIT", raising=False)
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    # other processes change it between the two readings; a tenth of the machine is far more than that
    assert abs(limits.memory_budget() - available) < available / 10


def test_refusals_name_what_and_how_much(monkeypatch):
    monkeypatch.setenv("DIFFRAME_MEMORY_LIMIT", "1G")
    limits.check_allocation(limits.array_bytes((1024, 1024), 1024), "exactly the budget")
    with pytest.raises(DataError, match=r"the frames needs 1073741825 bytes of memory, over the budget of "
                                        r"1073741824 bytes \(DIFFRAME_MEMORY_LIMIT\)"):
        limits.check_allocation(2**30 + 1, "the frames")
    with pytest.raises(DataError, match=r"the stack needs 1.5 GiB of memory, over the budget of 1 GiB"):
        limits.check_allocation(1.5 * 2**30, "the stack")
    huge = limits.array_bytes((10**200, 10**200), 8)  # no integer overflow, no wrap-around to a small size
    with pytest.raises(ParameterError, match="an unbounded amount"):
        limits.check_allocation(huge, "a lie", ParameterError)
    with pytest.raises(DataError, match="an unbounded amount"):
        limits.check_allocation(float("nan"), "not a number")
