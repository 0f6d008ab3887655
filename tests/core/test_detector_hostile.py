"""Hostile and faulty detector files (issue 10): each ends in one DataError naming the file, promptly,
without reading or allocating more than the frame its header declares."""

import bz2
import gzip
import logging
import os
import threading
import tracemalloc

import fabio
import numpy as np
import pytest
from fabio.compression import compByteOffset

from difframe.byteoffset import decode_byte_offset
from difframe.detector import DEFAULT_MAX_FRAME_BYTES, open_frame
from difframe.errors import DataError, UsageError
from difframe.manager import PluginManager

HANG_GUARD_S = 120  # a read still running after this is a hang (the readers finish in well under a second)


@pytest.fixture(scope="module")
def plugins():
    return PluginManager()


def finishes(fn, *args):
    """``fn(*args)`` run in a thread: its result or exception, or a test failure if it never returns."""
    box = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG_GUARD_S)
    if thread.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} did not return: it hangs")
    if "error" in box:
        raise box["error"]
    return box["value"]


def peak_bytes(fn, *args):
    """The exception ``fn(*args)`` raises and the peak of Python/numpy allocations meanwhile."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as info:
            fn(*args)
        return info.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def small_cbf(path, data):
    """A CBF written by fabio (an independent writer, with Content-MD5)."""
    fabio.cbfimage.CbfImage(data=data).write(str(path))
    return path.read_bytes()


def cbf_header(shape, binary_size, md5=None, elements=None):
    """A mini-CBF head declaring ``shape`` (rows, cols), up to the binary starter."""
    rows, cols = shape
    lines = ["###CBF: VERSION 1.5", "data_probe", "_array_data.header_convention \"PILATUS_1.2\"",
             "_array_data.header_contents", ";", "# Wavelength 1.0 A", ";", "", "_array_data.data", ";",
             "--CIF-BINARY-FORMAT-SECTION--", "Content-Type: application/octet-stream;",
             '     conversions="x-CBF_BYTE_OFFSET"', f"X-Binary-Size: {binary_size}",
             'X-Binary-Element-Type: "signed 32-bit integer"',
             f"X-Binary-Number-of-Elements: {rows * cols if elements is None else elements}",
             f"X-Binary-Size-Fastest-Dimension: {cols}", f"X-Binary-Size-Second-Dimension: {rows}"]
    if md5:
        lines.append(f"Content-MD5: {md5}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + b"\x0c\x1a\x04\xd5"


def zeros_bomb(compress, mib=1024):
    """``mib`` MiB of zero bytes as concatenated compressed members (both formats read multi-member)."""
    return compress(bytes(16 * 2**20), 9) * (mib // 16)


# -- what may be opened ------------------------------------------------------------------------------


def test_fifo_is_refused_without_blocking(plugins, tmp_path):
    fifo = tmp_path / "frame_0001.cbf"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=r"frame_0001.cbf is a FIFO; frames are read from regular files only"):
        finishes(open_frame, fifo, plugins)


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/null"])
def test_link_to_a_device_is_refused_naming_link_and_target(plugins, tmp_path, target):
    link = tmp_path / "frame_0002.cbf"
    link.symlink_to(target)
    with pytest.raises(DataError, match=rf"frame_0002.cbf \(a link to {target}\) is a character device"):
        finishes(open_frame, link, plugins)


def test_directory_is_refused(plugins, tmp_path):
    folder = tmp_path / "frames.edf"
    folder.mkdir()
    with pytest.raises(DataError, match="frames.edf is a directory"):
        open_frame(folder, plugins)


# -- truncated and inconsistent CBF headers ---------------------------------------------------------


@pytest.fixture(scope="module")
def real_heads(real_data):
    """The decompressed first 64 KiB (header and start of the pixels) of a mini and a full real CBF."""
    heads = {}
    for name in ("dlsnxs2cbf_therm_0001.cbf.gz", "DLS_I03_smargon_0001.cbf.gz"):
        with gzip.open(real_data / name) as stream:
            heads[name] = stream.read(65536)
    return heads


@pytest.mark.parametrize("name", ["dlsnxs2cbf_therm_0001.cbf.gz", "DLS_I03_smargon_0001.cbf.gz"])
def test_real_cbf_cut_anywhere_in_its_header_is_one_data_error(plugins, tmp_path, real_heads, name):
    head = real_heads[name]
    end = head.find(b"\x0c\x1a\x04\xd5") + 4
    assert end > 700
    cuts = sorted({700, end - 1, end, *range(40, end, max(1, end // 25))})
    for cut in cuts:
        for suffix, pack in ((".cbf", bytes), (".cbf.bz2", bz2.compress)):
            path = tmp_path / f"cut_{cut}{suffix}"
            path.write_bytes(pack(head[:cut]))
            with pytest.raises(DataError, match=f"cut_{cut}{suffix}"):
                finishes(open_frame, path, plugins)


def test_cut_inside_the_cif_header_says_so(plugins, tmp_path, real_heads):
    path = tmp_path / "frame_0700.cbf"
    path.write_bytes(real_heads["dlsnxs2cbf_therm_0001.cbf.gz"][:700])
    with pytest.raises(DataError, match="frame_0700.cbf is truncated inside its header"):
        finishes(open_frame, path, plugins)


def test_unclosed_text_field_and_quote_in_the_cif_header(plugins, tmp_path):
    good = small_cbf(tmp_path / "good.cbf", np.ones((2, 3), np.int32))
    for name, bad in (("field.cbf", good.replace(b"data_good\r\n", b"data_good\r\n_a.b\r\n;\r\nopen text\r\n")),
                      ("quote.cbf", good.replace(b"data_good\r\n", b"data_good\r\n_a.b 'no end\r\n"))):
        (tmp_path / name).write_bytes(bad)
        with pytest.raises(DataError, match=f"{name}: its header has an? (text field|unterminated)"):
            open_frame(tmp_path / name, plugins)


@pytest.mark.parametrize("edit, message", [
    ((b"X-Binary-Size: 24", b"X-Binary-Size: 1000"), r"X-Binary-Size 1000 cannot hold 6 byte-offset pixels"),
    ((b"X-Binary-Size: 24", b"X-Binary-Size: 5"), r"X-Binary-Size 5 cannot hold 6"),
    ((b"X-Binary-Size: 24", b"X-Binary-Size: 12"), r"is corrupt: the MD5 of its binary section"),
    ((b"X-Binary-Size: 24", b"X-Binary-Size: 1e9"), r"header key X-Binary-Size is '1e9'"),
    ((b"Number-of-Elements: 6", b"Number-of-Elements: 7"), r"X-Binary-Number-of-Elements is 7"),
    ((b"Fastest-Dimension: 3", b"Fastest-Dimension: -3"), r"X-Binary-Size-Fastest-Dimension is '-3'"),
    ((b"Fastest-Dimension: 3", b"Fastest-Dimension: 0"), r"declares a frame of shape 2 x 0"),
    ((b"x-CBF_BYTE_OFFSET", b"x-CBF_PACKED"), r"compression 'x-CBF_PACKED'"),
    ((b"signed 32-bit integer", b"signed 32-bit real IEEE"), r"X-Binary-Element-Type 'signed 32-bit real ieee'"),
])
def test_inconsistent_binary_header_names_the_key(plugins, tmp_path, edit, message):
    data = np.array([[1, 2, 3], [40000, -70000, 2**31 - 1]], np.int32)  # 1-, 3- and 7-byte tokens: 24 bytes
    raw = small_cbf(tmp_path / "frame.cbf", data)
    assert b"X-Binary-Size: 24\r\n" in raw and edit[0] in raw
    np.testing.assert_array_equal(open_frame(tmp_path / "frame.cbf", plugins).data, data)
    (tmp_path / "frame.cbf").write_bytes(raw.replace(*edit, 1))
    with pytest.raises(DataError, match=r"frame.cbf.*" + message):
        open_frame(tmp_path / "frame.cbf", plugins)


# -- sizes: declared shape cap, compression bombs ----------------------------------------------------


@pytest.mark.parametrize("pack", [bz2.compress, gzip.compress], ids=["bz2", "gz"])
def test_bomb_declaring_a_huge_frame_is_refused_before_decompressing_it(plugins, tmp_path, pack):
    path = tmp_path / "bomb.cbf.bz2"
    path.write_bytes(pack(cbf_header((32768, 32768), 32768**2), 9) + zeros_bomb(pack))
    assert path.stat().st_size < 2**20
    error, peak = peak_bytes(finishes, open_frame, path, plugins)
    assert "bomb.cbf.bz2" in str(error) and "32768 x 32768 int32" in str(error)
    assert "DIFFRAME_MAX_FRAME_BYTES" in str(error)
    assert peak < 16 * 2**20


def test_bomb_behind_a_small_frame_is_not_decompressed(plugins, tmp_path):
    """A 100 x 100 frame followed by 1 GiB of zeros: only the frame is read, and its MD5 still holds."""
    frame = np.random.default_rng(1).integers(0, 1000, (100, 100)).astype(np.int32)
    raw = small_cbf(tmp_path / "plain.cbf", frame)
    path = tmp_path / "frame_0001.cbf.bz2"
    path.write_bytes(bz2.compress(raw) + zeros_bomb(bz2.compress))
    open_frame(tmp_path / "plain.cbf", plugins)  # numba's import and cache load are not the reader's allocations
    tracemalloc.start()
    try:
        data = finishes(open_frame, path, plugins).data
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(data, frame)
    assert peak < 16 * 2**20


def test_zeros_named_cbf_are_not_a_cbf(plugins, tmp_path):
    path = tmp_path / "zeros.cbf.gz"
    path.write_bytes(zeros_bomb(gzip.compress))
    error, peak = peak_bytes(finishes, open_frame, path, plugins)
    assert "zeros.cbf.gz is not a CBF file" in str(error)
    assert peak < 16 * 2**20


def test_frame_cap_follows_the_environment(plugins, tmp_path, monkeypatch):
    path = tmp_path / "frame.cbf"
    small_cbf(path, np.ones((20, 30), np.int32))
    monkeypatch.setenv("DIFFRAME_MAX_FRAME_BYTES", str(20 * 30 * 4 - 1))
    with pytest.raises(DataError, match=r"20 x 30 int32 = 2400 bytes, more than the 2399 bytes allowed"):
        open_frame(path, plugins)
    monkeypatch.setenv("DIFFRAME_MAX_FRAME_BYTES", "2400")
    assert open_frame(path, plugins).data.shape == (20, 30)
    monkeypatch.setenv("DIFFRAME_MEMORY_LIMIT", "2399")  # the shared memory budget (difframe.limits) applies too
    with pytest.raises(DataError, match=r"frame.cbf \(its header .* declares 20 x 30 int32\) needs 2400 bytes of "
                                        r"memory, over the budget of 2399 bytes \(DIFFRAME_MEMORY_LIMIT\)"):
        open_frame(path, plugins)
    monkeypatch.delenv("DIFFRAME_MEMORY_LIMIT")
    monkeypatch.setenv("DIFFRAME_MAX_FRAME_BYTES", "lots")
    with pytest.raises(UsageError, match="DIFFRAME_MAX_FRAME_BYTES='lots'"):
        open_frame(path, plugins)
    assert DEFAULT_MAX_FRAME_BYTES >= 4362 * 4148 * 8  # an Eiger2 16M frame even as float64


# -- checksums -----------------------------------------------------------------------------------------


def test_bit_flip_in_the_binary_section_is_an_error_by_default(plugins, tmp_path, caplog, monkeypatch):
    frame = np.random.default_rng(2).integers(0, 50, (40, 50)).astype(np.int32)
    raw = small_cbf(tmp_path / "good.cbf", frame)
    start = raw.find(b"\x0c\x1a\x04\xd5") + 4
    flipped = bytearray(raw)
    flipped[start + 1000] ^= 0x04
    path = tmp_path / "frame_0003.cbf"
    path.write_bytes(bytes(flipped))
    with pytest.raises(DataError, match=r"frame_0003.cbf is corrupt: the MD5 of its binary section .* Content-MD5"):
        open_frame(path, plugins)
    monkeypatch.setenv("DIFFRAME_BAD_CHECKSUM", "drop")
    with caplog.at_level(logging.WARNING, logger="difframe.detector"):
        dropped = open_frame(path, plugins)
    assert "frame_0003.cbf" in caplog.text and "dropped" in caplog.text
    assert dropped.data.shape == frame.shape and (dropped.data == -1).all()  # every pixel flagged invalid
    np.testing.assert_array_equal(open_frame(tmp_path / "good.cbf", plugins).data, frame)
    monkeypatch.setenv("DIFFRAME_BAD_CHECKSUM", "ignore")
    with pytest.raises(UsageError, match="DIFFRAME_BAD_CHECKSUM='ignore' must be one of error, drop"):
        open_frame(path, plugins)


# -- the byte-offset decoder against fabio's encoder ------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_byte_offset_decoder_matches_fabios_encoder(dtype):
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    steps = np.concatenate([rng.integers(-100, 100, 300), rng.integers(-30000, 30000, 100),
                            rng.integers(-2**31, 2**31 - 1, 50), [-128, 127, -32768, 32767, 2**31 - 1]])
    if dtype == np.int64:
        steps = np.concatenate([steps, rng.integers(-2**62, 2**62, 20), [2**40, -2**40]])
    data = np.clip(np.cumsum(rng.permutation(steps)), info.min, info.max).astype(dtype).reshape(-1, 1)
    stream = bytes(compByteOffset(data.astype(np.int64)))
    np.testing.assert_array_equal(decode_byte_offset(stream, data.shape, dtype, "x.cbf"), data)
    for cut in (1, 2, 6, 14):
        with pytest.raises(DataError, match=r"x.cbf is corrupt: its binary section .* holds \d+ pixels"):
            decode_byte_offset(stream[:-cut], data.shape, dtype, "x.cbf")
    with pytest.raises(DataError, match="end after"):
        decode_byte_offset(stream + b"\x01", data.shape, dtype, "x.cbf")
    with pytest.raises(DataError, match="holds 0 pixels"):
        decode_byte_offset(b"\x80\x00", (1, 1), dtype, "x.cbf")  # an escape cut short: nothing read beyond


# -- EDF headers that lie -----------------------------------------------------------------------------


def edf_bytes(tmp_path, data, **header):
    path = tmp_path / "tmp.edf"
    fabio.edfimage.EdfImage(data=data, header=header).write(str(path))
    return path.read_bytes()


def replace_entry(raw: bytes, key: str, value: str) -> bytes:
    """``raw`` with the header entry ``key = ...;`` set to ``value`` (the header keeps its length)."""
    head_end = raw.index(b"}\n")
    head = raw[:head_end].decode()
    start = head.index(f"\n{key} = ") + len(key) + 4
    stop = head.index(" ;", start)
    body = (head[:start] + value + head[stop:]).rstrip(" ")  # fabio pads the header with spaces
    assert len(body) <= len(head)
    return (body + " " * (len(head) - len(body))).encode() + raw[head_end:]


@pytest.mark.parametrize("key, value, message", [
    ("Dim_1", "100000", r"header key Size = 2400 does not match Dim_1 x Dim_2 of DataType \(100000 x 20 x 4"),
    ("Size", "999", r"header key Size = 999 does not match Dim_1 x Dim_2 of DataType"),
    ("DataType", "DoubleValue", r"header key Size = 2400 does not match .* \(30 x 20 x 8 = 4800\)"),
    ("DataType", "Complex", r"header key DataType is 'Complex'"),
    ("Dim_2", "2x", r"header key Dim_2 is '2x'"),
    ("ByteOrder", "Middle", r"ByteOrder is 'Middle'"),
])
def test_edf_header_lies_name_the_key(plugins, tmp_path, key, value, message):
    raw = edf_bytes(tmp_path, np.ones((20, 30), np.int32))
    path = tmp_path / "filter.edf"
    path.write_bytes(replace_entry(raw, key, value))
    with pytest.raises(DataError, match=r"filter.edf.*" + message):
        open_frame(path, plugins)


def test_edf_without_size_keys_is_checked_against_the_file_length(plugins, tmp_path):
    raw = edf_bytes(tmp_path, np.arange(600, dtype=np.int32).reshape(20, 30))
    for key in ("Size", "EDF_BinarySize"):
        raw = replace_entry(raw, key, "0").replace(f"\n{key} = 0 ;".encode(), b"\n" + b" " * (len(key) + 6))
    path = tmp_path / "filter.edf"
    path.write_bytes(raw)
    np.testing.assert_array_equal(open_frame(path, plugins).data, np.arange(600).reshape(20, 30))
    path.write_bytes(replace_entry(raw, "DataType", "SignedByte"))  # 600 bytes declared, 2400 present
    with pytest.raises(DataError, match=r"filter.edf holds more data than its header declares .*DataType"):
        open_frame(path, plugins)
    path.write_bytes(replace_entry(raw, "DataType", "DoubleValue"))  # 4800 declared
    with pytest.raises(DataError, match=r"filter.edf is truncated: its header declares 4800 bytes"):
        open_frame(path, plugins)


def test_edf_bomb_and_huge_dimensions_allocate_nothing(plugins, tmp_path):
    raw = edf_bytes(tmp_path, np.ones((2, 3), np.int32))
    raw = replace_entry(replace_entry(replace_entry(raw, "Dim_1", "50000"), "Dim_2", "50000"), "Size", "10000000000")
    raw = replace_entry(raw, "EDF_BinarySize", "10000000000")
    path = tmp_path / "filter.edf.gz"
    path.write_bytes(gzip.compress(raw[:raw.index(b"}\n") + 2]) + zeros_bomb(gzip.compress, 256))
    error, peak = peak_bytes(finishes, open_frame, path, plugins)
    assert "filter.edf.gz" in str(error) and "50000 x 50000 int32 = 10000000000 bytes" in str(error)
    assert peak < 16 * 2**20
    path.write_bytes(gzip.compress(raw[:300]))
    with pytest.raises(DataError, match=r"filter.edf.gz is truncated inside its header"):
        finishes(open_frame, path, plugins)


# -- the command line ----------------------------------------------------------------------------------


def test_inspect_refuses_a_fifo_and_a_bomb_with_one_line(tmp_path, capsys):
    from difframe.cli import main

    fifo = tmp_path / "frame.cbf"
    os.mkfifo(fifo)
    bomb = tmp_path / "bomb.cbf.bz2"
    bomb.write_bytes(bz2.compress(cbf_header((40000, 40000), 40000**2)) + zeros_bomb(bz2.compress, 64))
    for path in (fifo, bomb):
        assert finishes(main, ["inspect", str(path)]) == 1
        err = capsys.readouterr().err
        assert path.name in err and err.count("\n") == 1


def test_edf_without_a_header_end_or_not_edf_at_all(plugins, tmp_path):
    endless = tmp_path / "endless.edf.gz"
    endless.write_bytes(gzip.compress(b"{\nHeaderID = EH:1 ;\nDataType = SignedInteger ;\n" + b"x = y ;\n" * 2**18))
    with pytest.raises(DataError, match=r"endless.edf.gz: no end of the EDF header .* within its first 1048576 bytes"):
        finishes(open_frame, endless, plugins)
    notes = tmp_path / "notes.edf"
    notes.write_text("a shopping list\n" * 100)
    with pytest.raises(DataError, match=r"notes.edf is not an EDF file"):
        open_frame(notes, plugins)


def test_edf_without_data_type_and_long_header_values_are_cut(plugins, tmp_path):
    raw = edf_bytes(tmp_path, np.ones((2, 3), np.int32))
    path = tmp_path / "mask.edf"
    path.write_bytes(raw.replace(b"\nDataType = SignedInteger ;", b"\n" + b" " * 25))
    with pytest.raises(DataError, match="mask.edf: its header has no DataType"):
        open_frame(path, plugins)
    path.write_bytes(replace_entry(raw, "DataType", "Q" * 200))
    with pytest.raises(DataError, match=r"DataType is 'Q{32}'\.\.\., not one of") as info:
        open_frame(path, plugins)
    assert "Q" * 33 not in str(info.value)


ELEMENT_NAMES = {np.int8: "signed 8-bit integer", np.uint8: "unsigned 8-bit integer",
                 np.int16: "signed 16-bit integer", np.uint16: "unsigned 16-bit integer",
                 np.int32: "signed 32-bit integer", np.uint32: "unsigned 32-bit integer"}


@pytest.mark.parametrize("dtype", list(ELEMENT_NAMES))
def test_every_integer_type_at_its_extremes(plugins, tmp_path, dtype):
    """Alternating minimum and maximum (the longest byte-offset token for every pixel, exact differences
    encoded by fabio's encoder) read back exactly, within the X-Binary-Size bound of the type."""
    info = np.iinfo(dtype)
    data = np.where(np.indices((30, 40)).sum(0) % 2 == 0, info.min, info.max).astype(dtype)
    data[3:7, 5:9] = np.random.default_rng(4).integers(info.min, info.max, (4, 4), endpoint=True)
    stream = bytes(compByteOffset(data.astype(np.int64)))
    head = cbf_header(data.shape, len(stream)).replace(b"signed 32-bit integer", ELEMENT_NAMES[dtype].encode())
    (tmp_path / "extremes.cbf").write_bytes(head + stream)
    frame = open_frame(tmp_path / "extremes.cbf", plugins).data
    assert frame.dtype == dtype
    np.testing.assert_array_equal(frame, data)
