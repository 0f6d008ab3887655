"""HDF5 files that point elsewhere, loop or lie about their size are refused naming the file and node (issue 10)."""

import os

import h5py
import numpy as np
import pytest

from difframe import h5safe
from difframe.errors import DataError
from difframe.ptycho import h5typed


def typed(path, **content):
    h5typed.write(path, content)
    return path


@pytest.fixture
def folder(tmp_path):
    """A file's folder ``data`` beside a folder ``other`` it must not reach."""
    (tmp_path / "data").mkdir()
    (tmp_path / "other").mkdir()
    typed(tmp_path / "other" / "secret.h5", k={"v": np.arange(3.0)})
    return tmp_path


@pytest.mark.parametrize("target", ["../other/secret.h5", "ABS", "/etc/passwd", "/proc/self/mem"])
def test_external_links_out_of_the_folder_are_refused(folder, target):
    target = str(folder / "other" / "secret.h5") if target == "ABS" else target
    path = typed(folder / "data" / "a.h5", meta={"x": 1.0})
    with h5py.File(path, "a") as f:
        f["meta/leak"] = h5py.ExternalLink(target, "/k")
    with pytest.raises(DataError) as err:
        h5typed.read(path)
    text = str(err.value)
    assert f"{path}:/meta/leak" in text and repr(target) in text and "leaves the allowed folders" in text


def test_a_named_folder_lets_the_link_through(folder, monkeypatch):
    path = typed(folder / "data" / "a.h5", meta={"x": 1.0})
    with h5py.File(path, "a") as f:
        f["meta/k"] = h5py.ExternalLink("../other/secret.h5", "/k")
    monkeypatch.setenv(h5safe.ENV_LINK_DIRS, str(folder / "other"))
    np.testing.assert_array_equal(h5typed.read(path)["meta"]["k"]["v"], np.arange(3.0))
    monkeypatch.setenv(h5safe.ENV_LINK_DIRS, os.pathsep.join(["", str(folder / "elsewhere")]))
    with pytest.raises(DataError, match="leaves the allowed folders"):
        h5typed.read(path)


def test_links_inside_the_folder_are_followed_and_audited_in_turn(folder):
    inner = typed(folder / "data" / "inner.h5", v={"w": np.ones(2)})
    with h5py.File(inner, "a") as f:
        f["v/leak"] = h5py.ExternalLink("/etc/passwd", "/")
    path = typed(folder / "data" / "a.h5", meta={"x": 1.0})
    with h5py.File(path, "a") as f:
        f["meta/inner"] = h5py.ExternalLink("inner.h5", "/v")
    with pytest.raises(DataError, match=f"{inner}:/v/leak: external link to '/etc/passwd'"):
        h5typed.read(path)
    with h5py.File(inner, "a") as f:
        del f["v/leak"]
        f["v/s1"], f["v/s2"] = h5py.SoftLink("/v/s2"), h5py.SoftLink("s1")
    with pytest.raises(DataError, match=f"{inner}:/v/s1: soft link to '/v/s2' never ends"):
        h5typed.read(path)


def test_a_symlink_or_fifo_in_the_folder_is_no_way_out(folder):
    os.symlink(folder / "other" / "secret.h5", folder / "data" / "s.h5")
    os.mkfifo(folder / "data" / "pipe.h5")
    for name, why in (("s.h5", "leaves the allowed folders"), ("pipe.h5", "not a regular file")):
        path = typed(folder / "data" / "a.h5", meta={"x": 1.0})
        with h5py.File(path, "a") as f:
            f["meta/k"] = h5py.ExternalLink(name, "/k")
        with pytest.raises(DataError, match=why):
            h5typed.read(path)


def test_raw_data_and_virtual_sources_elsewhere_are_refused(folder):
    path = folder / "data" / "a.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", shape=(10,), dtype="u1", external=[("/etc/passwd", 0, 10)])
    with pytest.raises(DataError, match=f"{path}:/raw: external raw data to '/etc/passwd'"):
        h5safe.open_file(path)
    layout = h5py.VirtualLayout(shape=(3,), dtype="f8")
    layout[:] = h5py.VirtualSource(str(folder / "other" / "secret.h5"), "k/v", shape=(3,))
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("virtual", layout)
    with pytest.raises(DataError, match=f"{path}:/virtual: virtual dataset source"):
        h5safe.open_file(path)


def test_link_cycles_are_named_not_recursed(tmp_path):
    path = typed(tmp_path / "a.h5", g={"x": 1.0}, h={"y": 2.0})
    with h5py.File(path, "a") as f:
        f["g"]["self"] = f["g"]  # a group that contains itself (hard link)
    with pytest.raises(DataError, match=f"{path}:/g/self: link cycle, a hard link back to /g, a group"):
        h5typed.read(path)
    with h5py.File(path, "a") as f:
        del f["g/self"]
        f["h/up"] = h5py.SoftLink("/h")  # a soft link to its own group
    with pytest.raises(DataError, match=f"{path}:/h/up: link cycle, a soft link to /h back to /h, a group holding"):
        h5typed.read(path)
    with h5py.File(path, "a") as f:
        del f["h/up"]
        f["s1"] = h5py.SoftLink("/s2/deeper")
        f["s2"] = h5py.SoftLink("/s1")  # soft links that never end
    with pytest.raises(DataError, match=f"{path}:/s1: soft link to '/s2/deeper' never ends"):
        h5typed.read(path)
    with h5py.File(path, "a") as f:
        del f["s1"], f["s2"]
        f["g/back"] = h5py.ExternalLink("a.h5", "/")  # back into the same file
    with pytest.raises(DataError, match=f"{path}:/g/back: link cycle, a link to a.h5:/ back to /, a group"):
        h5typed.read(path)


def test_a_cycle_between_groups_reached_twice_is_found(tmp_path):
    path = typed(tmp_path / "a.h5", a={"x": 1.0}, b={"y": 2.0})
    with h5py.File(path, "a") as f:
        f["a/to_b"] = f["b"]
        f["b/to_a"] = f["a"]
    with pytest.raises(DataError, match=f"{path}:/(a/to_b/to_a|b/to_a/to_b): link cycle, a hard link back to /"):
        h5typed.read(path)


def test_groups_shared_exponentially_often_do_not_hang(tmp_path, monkeypatch):
    monkeypatch.setattr(h5safe, "MAX_LINKS", 300)
    path = tmp_path / "dag.h5"
    with h5py.File(path, "w") as f:  # 20 levels, each linking twice to the next: 2**20 paths to the leaf
        levels = [f.create_group(f"l{i}") for i in range(21)]
        for upper, lower in zip(levels, levels[1:]):
            upper["left"], upper["right"] = lower, lower
    with pytest.raises(DataError, match="more than 300 nodes read from one tree"):
        h5typed.read(path, "l0")


def test_shared_groups_and_dangling_links_are_not_cycles(tmp_path):
    path = typed(tmp_path / "a.h5", g={"x": np.arange(4.0)})
    with h5py.File(path, "a") as f:
        f["twin"] = f["g"]
        f["alias"] = h5py.SoftLink("/g/x")
        f["lost"] = h5py.ExternalLink("missing.h5", "/")
    with h5safe.open_file(path) as f:
        np.testing.assert_array_equal(f["alias"][()], np.arange(4.0))
    with pytest.raises(DataError, match=f"{path}:/lost: dangling link to missing.h5:/"):
        h5typed.read(path)


def test_declared_sizes_are_checked_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:  # a few kB declaring 2.2 GiB
        f.create_dataset("huge", shape=(6, 10000, 10000), dtype="f4", chunks=(1, 100, 100), compression="gzip")
        f["huge"].attrs["type"] = "array"
        for i in range(4):
            f.create_dataset(f"part{i}", shape=(2**18,), dtype="f8")  # 2 MiB each once read, never written
    assert os.path.getsize(path) < 200_000
    monkeypatch.setenv("DIFFRAME_MEMORY_LIMIT", "7M")
    with pytest.raises(DataError, match=rf"{path}:/huge \(shape \(6, 10000, 10000\), float32.*needs 2.24 GiB"):
        h5typed.read(path, "huge")
    with pytest.raises(DataError, match=r":/part3 .*after 6 MiB read from the same tree.*budget of 7 MiB "
                                        r"\(DIFFRAME_MEMORY_LIMIT\)"):
        h5typed.read(path, "part0", "part1", "part2", "part3")
    assert h5typed.read(path, "part0")["part0"].shape == (2**18,)


def test_a_corrupt_chunk_names_file_and_node(tmp_path):
    path = tmp_path / "c.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.create_dataset("d", data=rng.poisson(5.0, (4, 64, 64)), chunks=(1, 64, 64), compression="gzip")
        info = f["d"].id.get_chunk_info(2)
    with open(path, "r+b") as raw:
        raw.seek(info.byte_offset + info.size // 2)
        raw.write(b"\xff" * 16)
    with pytest.raises(DataError, match=f"{path}:/d: cannot read"):
        h5typed.read(path)
    with h5safe.open_file(path) as f:
        assert h5safe.read_dataset(f["d"], str(path), np.s_[0:2], rows=2).shape == (2, 64, 64)
