"""qpack, the packed-weight file format (backends/qpack*.py, docs/qpack.md).

Round trips (bits 2..8, signed/unsigned, every granularity, float16 scales, padding), the bit order
(against ONNX/ml_dtypes int4 packing and a hand-worked byte example), determinism across processes,
size overhead, every refusal of the reader, fuzzing with hypothesis, and ``qgraph inspect``.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qgraph.backends.qpack import (
    PackedTensor,
    QPack,
    pack_bits,
    packed_length,
    read_qpack,
    unpack_bits,
    write_qpack,
)
from qgraph.backends.qpack_describe import stored_bytes
from safetensors import safe_open
from safetensors.numpy import save_file

from qgraph.errors import QGraphError, QPackError

ROOT = Path(__file__).resolve().parents[1]
ST_CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
            "int16": "I16", "int8": "I8", "uint64": "U64", "uint32": "U32", "uint16": "U16", "uint8": "U8", "bool": "BOOL"}


def _range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def _packed(name, shape, bits, signed, gran, scale_dtype=np.float32, zp=False, seed=0) -> PackedTensor:
    rng = np.random.default_rng(seed)
    qmin, qmax = _range(bits, signed)
    codes = rng.integers(qmin, qmax + 1, size=shape).astype(np.int8 if signed else np.uint8)
    if gran["kind"] == "per_tensor":
        sshape = ()
    elif gran["kind"] == "per_channel":
        sshape = (shape[gran["axis"]],)
    else:
        axis = gran.get("axis", -1)
        sshape = list(shape)
        sshape[axis] //= gran["size"]
        sshape = tuple(sshape)
    scale = (rng.random(sshape) * 0.1 + 1e-3).astype(scale_dtype)
    zero = rng.integers(qmin, qmax + 1, size=sshape) if zp else np.zeros(sshape)
    return PackedTensor(name, codes, bits, qmin, qmax, scale, zero.astype(np.float32), gran)


def _sample() -> tuple[list[PackedTensor], dict[str, np.ndarray], dict]:
    """A small valid qpack: packed tensors of several bit widths and granularities, and plain tensors."""
    packed = [
        _packed("conv1.weight", (4, 3, 3, 3), 8, True, {"kind": "per_channel", "axis": 0}, seed=1),
        _packed("fc.weight", (5, 16), 4, True, {"kind": "per_group", "size": 8}, np.float16, seed=2),
        _packed("head.weight", (3, 7), 3, False, {"kind": "per_tensor"}, zp=True, seed=3),
        _packed("lm.weight", (8, 5), 2, True, {"kind": "per_group", "size": 4, "axis": 0}, seed=4),
    ]
    floats = {
        "conv1.bias": np.linspace(-1, 1, 4, dtype=np.float32),
        "norm.weight": np.ones(6, np.float16),
        "norm.bf": np.arange(3).astype(ml_dtypes.bfloat16),
        "steps": np.array(7, np.int64),
    }
    return packed, floats, {"recipe": {"name": "w4a16"}, "example_inputs": [{"shape": [1, 3, 8, 8], "dtype": "float32"}]}


def _assert_same(a: PackedTensor, b: PackedTensor) -> None:
    assert (a.name, a.bits, a.qmin, a.qmax, a.granularity) == (b.name, b.bits, b.qmin, b.qmax, b.granularity)
    assert a.codes.dtype == (np.int8 if a.qmin < 0 else np.uint8) and a.codes.shape == b.codes.shape
    assert np.array_equal(a.codes.astype(np.int16), b.codes.astype(np.int16))
    assert a.scale.dtype == b.scale.dtype and a.scale.shape == b.scale.shape and np.array_equal(a.scale, b.scale)
    assert a.zero_point.shape == b.scale.shape and np.array_equal(a.zero_point.astype(np.float64), b.zero_point.astype(np.float64))


@pytest.fixture
def sample_file(tmp_path) -> Path:
    path = tmp_path / "sample.qpack"
    write_qpack(str(path), *_sample())
    return path


# --------------------------------------------------------------------------- bit packing


def test_pack_bits_byte_example():
    # the worked example of docs/qpack.md: element 0 in the low bits, last byte padded with zeros
    assert pack_bits(np.array([1, -2, 3], np.int8), 4).tolist() == [0xE1, 0x03]
    assert pack_bits(np.array([0, 1, 2, 3, 1], np.uint8), 2).tolist() == [0b11_10_01_00, 0b01]
    assert pack_bits(np.array([-1, -2, 1, 0, -1], np.int8), 2).tolist() == [0b00_01_10_11, 0b11]
    assert pack_bits(np.array([-4, 3], np.int8), 3).tolist() == [0x3C]  # 3-bit codes in 4-bit fields
    assert pack_bits(np.array([-30, 31], np.int8), 6).tolist() == [0xE2, 0x1F]  # one per byte
    assert unpack_bits(np.array([0xE1, 0x03], np.uint8), 4, 3, signed=True).tolist() == [1, -2, 3]


@pytest.mark.parametrize("signed", [True, False])
def test_pack_matches_onnx_int4(signed):
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 64, 1001):
        lo, hi = _range(4, signed)
        codes = rng.integers(lo, hi + 1, size=n)
        as_int4 = np.array(codes, dtype=ml_dtypes.int4 if signed else ml_dtypes.uint4)
        assert numpy_helper.from_array(as_int4).raw_data == pack_bits(codes, 4).tobytes()
        back = unpack_bits(pack_bits(codes, 4), 4, n, signed)
        assert back.dtype == (np.int8 if signed else np.uint8) and back.tolist() == codes.tolist()


@given(st.integers(1, 8), st.booleans(), st.lists(st.integers(0, 2**16), max_size=70))
@settings(max_examples=300, deadline=None, database=None)
def test_pack_unpack_property(bits, signed, raw):
    lo, hi = _range(bits, signed)
    codes = np.array([lo + r % (hi - lo + 1) for r in raw], np.int64)
    data = pack_bits(codes, bits)
    width = 2 if bits <= 2 else 4 if bits <= 4 else 8
    assert data.dtype == np.uint8 and data.size == -(-codes.size * width // 8)
    assert unpack_bits(data, bits, codes.size, signed).tolist() == codes.tolist()


def test_pack_refuses_codes_that_do_not_fit():
    with pytest.raises(QPackError, match="do not fit 4 bits"):
        pack_bits(np.array([16]), 4)
    with pytest.raises(QPackError, match="bits must be"):
        pack_bits(np.array([1]), 9)
    with pytest.raises(QPackError, match="need 2 bytes"):
        unpack_bits(np.zeros(1, np.uint8), 4, 3, signed=False)


# --------------------------------------------------------------------------- round trips


GRANULARITIES = [
    ((6, 10), {"kind": "per_tensor"}),
    ((6, 10), {"kind": "per_channel", "axis": 0}),
    ((3, 5, 2), {"kind": "per_channel", "axis": 1}),
    ((6, 10), {"kind": "per_group", "size": 5}),
    ((8, 3), {"kind": "per_group", "size": 4, "axis": 0}),
]


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("signed", [True, False])
def test_round_trip_bits(tmp_path, bits, signed):
    packed = [_packed(f"w{i}", shape, bits, signed, gran, np.float16 if i % 2 else np.float32, zp=not signed, seed=i)
              for i, (shape, gran) in enumerate(GRANULARITIES)]
    packed.append(_packed("odd", (3, 3, 3), bits, signed, {"kind": "per_tensor"}, seed=9))  # 27 codes: padding
    packed.append(_packed("empty", (0, 4), bits, signed, {"kind": "per_channel", "axis": 1}, seed=10))
    path = tmp_path / "r.qpack"
    n = write_qpack(str(path), packed, {}, {})
    assert n == path.stat().st_size
    qp = read_qpack(str(path))
    assert isinstance(qp, QPack) and sorted(qp.packed) == sorted(p.name for p in packed) and qp.floats == {}
    for p in packed:
        _assert_same(qp.packed[p.name], p)


def test_round_trip_floats_meta_and_dtypes(sample_file):
    packed, floats, meta = _sample()
    qp = read_qpack(str(sample_file))
    import qgraph

    assert qp.meta == meta and qp.version == qgraph.__version__
    assert list(qp.floats) == sorted(floats)
    for k, v in floats.items():
        assert qp.floats[k].dtype == v.dtype and qp.floats[k].shape == v.shape and np.array_equal(qp.floats[k], v)
    for p in packed:
        _assert_same(qp.packed[p.name], p)
    head = qp.packed["head.weight"]
    assert head.zero_point.dtype == np.uint8 and np.any(head.zero_point != 0)
    assert qp.packed["conv1.weight"].zero_point.dtype == np.int8  # all-zero: not stored, rebuilt as zeros


def test_big_endian_and_strided_inputs(tmp_path):
    a = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    p = _packed("w", (4, 6), 4, True, {"kind": "per_channel", "axis": 0})
    p.codes = np.asfortranarray(p.codes)
    write_qpack(str(tmp_path / "b.qpack"), [p], {"a": a}, {})
    qp = read_qpack(str(tmp_path / "b.qpack"))
    assert np.array_equal(qp.floats["a"], a) and qp.floats["a"].dtype == np.float32
    assert np.array_equal(qp.packed["w"].codes, p.codes)


def test_complex_plain_tensors_round_trip(tmp_path):
    """safetensors holds no complex dtype, so a model with a complex buffer (Meta's Llama code keeps its
    RoPE table ``freqs_cis`` as complex64) could not be written. Complex tensors are stored as their
    real view (a trailing dim of 2) and come back with their dtype, shape and bits; big-endian too."""
    rng = np.random.default_rng(0)
    floats = {"freqs_cis": np.exp(1j * rng.standard_normal((5, 4))).astype(np.complex64),
              "z": np.array(1.5 - 2j, dtype=np.complex128), "be": np.arange(6).astype(">c8").reshape(2, 3) * 1j,
              "w": np.ones((2, 2), np.float32)}
    write_qpack(str(tmp_path / "c.qpack"), [], floats, {})
    qp = read_qpack(str(tmp_path / "c.qpack"))
    for k, v in floats.items():
        assert qp.floats[k].dtype == v.dtype.newbyteorder("=") and qp.floats[k].shape == v.shape and np.array_equal(qp.floats[k], v)
    with safe_open(str(tmp_path / "c.qpack"), framework="numpy") as f:
        assert f.get_tensor("freqs_cis").dtype == np.float32 and f.get_tensor("freqs_cis").shape == (5, 4, 2)


def test_reserved_codebook_round_trip(tmp_path):
    p = _packed("w", (2, 8), 4, False, {"kind": "per_channel", "axis": 0})
    p.codebook = np.linspace(-1, 1, 16, dtype=np.float32)
    write_qpack(str(tmp_path / "c.qpack"), [p], {}, {})
    q = read_qpack(str(tmp_path / "c.qpack")).packed["w"]
    assert np.array_equal(q.codebook, p.codebook) and q.codebook.dtype == np.float32
    p.codebook = np.zeros(8, np.float32)
    with pytest.raises(QPackError, match="'w'.*codebook"):
        write_qpack(str(tmp_path / "d.qpack"), [p], {}, {})


def _nm_packed(shape=(3, 2, 8), n=2, m=4, bits=4, signed=True, zp=False, seed=0) -> PackedTensor:
    """A packed tensor whose codes are exactly N:M sparse along each row (pruned codes = zero point)."""
    p = _packed("w", shape, bits, signed, {"kind": "per_channel", "axis": 0}, zp=zp, seed=seed)
    rng = np.random.default_rng(seed + 1)
    rows = shape[0]
    g = p.codes.reshape(rows, -1, m)
    idx = np.sort(np.argsort(rng.random(g.shape), axis=-1)[..., :n], axis=-1)
    keep = np.zeros(g.shape, bool)
    np.put_along_axis(keep, idx, True, axis=-1)
    zfull = np.broadcast_to(np.asarray(p.zero_point).reshape(rows, 1, 1), g.shape).astype(g.dtype)
    p.codes = np.where(keep, g, zfull).reshape(shape)
    p.nm = {"n": n, "m": m, "indices": idx.reshape(rows, -1).astype(np.uint8)}
    return p


@pytest.mark.parametrize("n,m,bits,signed,zp", [(2, 4, 4, True, False), (1, 4, 8, True, False), (4, 8, 2, False, True),
                                                (2, 4, 3, False, True)])
def test_nm_round_trip_stores_kept_codes_and_indices(tmp_path, n, m, bits, signed, zp):
    p = _nm_packed((4, 3, 8), n, m, bits, signed, zp)
    write_qpack(str(tmp_path / "nm.qpack"), [p], {}, {})
    qp = read_qpack(str(tmp_path / "nm.qpack"))
    q = qp.packed["w"]
    assert np.array_equal(q.codes, p.codes) and q.codes.dtype == p.codes.dtype
    assert (q.nm["n"], q.nm["m"]) == (n, m) and np.array_equal(q.nm["indices"], p.nm["indices"])
    kept = p.codes.size // m * n
    assert stored_bytes(q) == packed_length(kept, bits) + packed_length(kept, 2 if m == 4 else 4) + q.scale.nbytes + (
        q.zero_point.size if zp else 0)
    with safe_open(str(tmp_path / "nm.qpack"), framework="numpy") as f:
        doc = json.loads(f.metadata()["qpack"])
        assert f.get_tensor("w.codes").shape == (packed_length(kept, bits),)
    assert doc["format_version"] == 2 and doc["manifest"]["w"]["nm"] == {"n": n, "m": m}
    dense = _packed("w", (4, 3, 8), bits, signed, {"kind": "per_channel", "axis": 0}, zp=zp)
    assert stored_bytes(q) < stored_bytes(dense) or bits == 2  # (2-bit codes with 4-bit indices: N:M costs more)


def test_nm_writer_refuses_codes_it_would_lose(tmp_path):
    p = _nm_packed()
    g = p.codes.reshape(3, -1, 4)
    pruned = np.ones(g.shape, bool)
    np.put_along_axis(pruned, p.nm["indices"].reshape(3, -1, 2).astype(np.int64), False, axis=-1)
    g[pruned.nonzero()[0][0], pruned.nonzero()[1][0], pruned.nonzero()[2][0]] = 5
    with pytest.raises(QPackError, match="'w'.*not the zero point"):
        write_qpack(str(tmp_path / "d.qpack"), [p], {}, {})
    p = _nm_packed()
    p.nm["indices"] = np.zeros((3, 3), np.uint8)
    with pytest.raises(QPackError, match="'w'.*nm indices must be uint8 of shape"):
        write_qpack(str(tmp_path / "d.qpack"), [p], {}, {})
    p = _nm_packed()
    p.nm["indices"][0, :2] = [1, 1]
    with pytest.raises(QPackError, match="strictly ascending"):
        write_qpack(str(tmp_path / "d.qpack"), [p], {}, {})
    p = _packed("w", (2, 6), 4, True, {"kind": "per_channel", "axis": 0})
    p.nm = {"n": 2, "m": 4, "indices": np.zeros((2, 3), np.uint8)}
    with pytest.raises(QPackError, match="multiple of m"):
        write_qpack(str(tmp_path / "d.qpack"), [p], {}, {})


def test_nm_reader_refuses_bad_indices_and_v1_nm(tmp_path):
    path = tmp_path / "nm.qpack"
    write_qpack(str(path), [_nm_packed()], {}, {})

    def dup(arrays, doc):  # both kept positions of the first group become 0
        arrays["w.nm_indices"] = arrays["w.nm_indices"].copy()
        arrays["w.nm_indices"][0] &= 0xF0
    _refused(_rewrite(path, tmp_path / "a.qpack", dup), "'w'", "strictly ascending")
    _refused(_rewrite(path, tmp_path / "b.qpack", lambda a, d: d.update(format_version=1)), "'w'", "need format_version 2")
    _refused(_rewrite(path, tmp_path / "c.qpack", lambda a, d: a.pop("w.nm_indices")), "missing tensor 'w.nm_indices'")


# --------------------------------------------------------------------------- determinism and size

_WRITER = """
import sys
sys.path.insert(0, {tests!r})
from test_qpack_format import _sample
from qgraph.backends.qpack import write_qpack
packed, floats, meta = _sample()
if sys.argv[2] == "reversed":
    packed, floats, meta = packed[::-1], dict(reversed(list(floats.items()))), dict(reversed(list(meta.items())))
write_qpack(sys.argv[1], packed, floats, meta)
"""


def test_writes_are_byte_identical(tmp_path):
    packed, floats, meta = _sample()
    write_qpack(str(tmp_path / "a.qpack"), packed, floats, meta)
    write_qpack(str(tmp_path / "b.qpack"), packed[::-1], dict(reversed(list(floats.items()))), meta)
    ref = (tmp_path / "a.qpack").read_bytes()
    assert (tmp_path / "b.qpack").read_bytes() == ref
    script = _WRITER.format(tests=str(ROOT / "tests"))
    out = tmp_path / "other_process.qpack"  # another process, another hash seed, inputs in another order
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", script, str(out), "reversed"], env=env, cwd=tmp_path, check=True, timeout=300)
    assert out.read_bytes() == ref, "another process wrote different bytes"


def test_written_file_has_ordinary_permissions(sample_file):
    # safetensors writes a 0600 temporary file and renames it; the writer gives it the umask's mode
    mask = os.umask(0o022)
    os.umask(mask)
    assert sample_file.stat().st_mode & 0o777 == 0o666 & ~mask


def test_checksum_is_as_documented(sample_file):
    n = struct.unpack("<Q", sample_file.read_bytes()[:8])[0]
    header = json.loads(sample_file.read_bytes()[8 : 8 + n])
    doc = json.loads(header["__metadata__"]["qpack"])
    assert header["__metadata__"]["qpack"] == json.dumps(doc, sort_keys=True, separators=(",", ":"))
    h = hashlib.sha256()
    with safe_open(str(sample_file), framework="numpy") as f:
        for key in sorted(f.keys()):
            a = f.get_tensor(key)
            h.update(json.dumps([key, ST_CODES[a.dtype.name], list(a.shape)], separators=(",", ":")).encode() + b"\n")
            h.update(a.tobytes())
    assert doc["checksum"] == "sha256:" + h.hexdigest()
    assert doc["format"] == "qgraph.qpack" and doc["format_version"] == 1
    entry = doc["manifest"]["fc.weight"]
    assert entry["packing"] == "4-bit fields, low bits first" and entry["tensors"] == {
        "codes": "fc.weight.codes", "scale": "fc.weight.scale"}
    assert doc["manifest"]["head.weight"]["tensors"]["zero_point"] == "head.weight.zero_point"


def test_size_overhead_is_only_the_header(tmp_path):
    p = _packed("big.weight", (1024, 1024), 4, True, {"kind": "per_channel", "axis": 0})
    path = tmp_path / "big.qpack"
    size = write_qpack(str(path), [p], {}, {"recipe": "w4a16"})
    header = 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert size == 2**19 + 1024 * 4 + header == header + stored_bytes(p)
    assert size <= 1.01 * (2**19 + 1024 * 4) and header < 1024


# --------------------------------------------------------------------------- refusals


def _rewrite(src: Path, dst: Path, mutate, fix_checksum: bool = True) -> Path:
    """Load ``src``'s tensors and qpack document, let ``mutate(arrays, doc)`` change them, write ``dst``
    (with a correct checksum unless told otherwise), bypassing the writer's checks."""
    with safe_open(str(src), framework="numpy") as f:
        arrays = {k: f.get_tensor(k) for k in f.keys()}
        doc = json.loads(f.metadata()["qpack"])
    mutate(arrays, doc)
    if fix_checksum:
        h = hashlib.sha256()
        for key in sorted(arrays):
            a = arrays[key]
            h.update(json.dumps([key, ST_CODES[a.dtype.name], list(a.shape)], separators=(",", ":")).encode() + b"\n")
            h.update(a.tobytes())
        doc["checksum"] = "sha256:" + h.hexdigest()
    save_file(arrays, str(dst), metadata={"qpack": json.dumps(doc, sort_keys=True, separators=(",", ":"))})
    return dst


def _refused(path: Path, *fragments: str) -> str:
    with pytest.raises(QPackError) as ei:
        read_qpack(str(path))
    msg = str(ei.value)
    assert str(path) in msg, msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    assert isinstance(ei.value, QGraphError)
    return msg


def test_refuses_non_safetensors(tmp_path):
    (tmp_path / "e.qpack").write_bytes(b"")
    _refused(tmp_path / "e.qpack", "not a safetensors file", "0 bytes")
    (tmp_path / "t.qpack").write_text("hello, this is a text file and not a qpack at all")
    _refused(tmp_path / "t.qpack", "not a safetensors file")
    (tmp_path / "j.qpack").write_bytes(struct.pack("<Q", 4) + b"[1] ")
    _refused(tmp_path / "j.qpack", "not a safetensors file")
    (tmp_path / "x.qpack").write_bytes(struct.pack("<Q", 6) + b"{oops}")
    _refused(tmp_path / "x.qpack", "not valid JSON")
    _refused(tmp_path / "missing.qpack", "cannot open")
    _refused(tmp_path, "not a regular file")
    if hasattr(os, "mkfifo"):  # reading a FIFO would block forever
        os.mkfifo(tmp_path / "fifo.qpack")
        _refused(tmp_path / "fifo.qpack", "not a regular file")


def test_refuses_foreign_safetensors(tmp_path):
    save_file({"w": np.ones(3, np.float32)}, str(tmp_path / "plain.safetensors"))
    _refused(tmp_path / "plain.safetensors", "not a qpack", "'w'")
    save_file({"w": np.ones(3, np.float32)}, str(tmp_path / "other.safetensors"), metadata={"format": "pt"})
    _refused(tmp_path / "other.safetensors", "not a qpack")


def test_refuses_truncated(tmp_path, sample_file):
    data = sample_file.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    (tmp_path / "h.qpack").write_bytes(data[: 8 + n // 2])
    _refused(tmp_path / "h.qpack", "truncated", f"offset {8 + n}", f"ends at {8 + n // 2}")
    (tmp_path / "d.qpack").write_bytes(data[:-3])
    _refused(tmp_path / "d.qpack", "truncated", f"offset {len(data)}", f"ends at {len(data) - 3}")
    (tmp_path / "x.qpack").write_bytes(data + b"\0\0")
    _refused(tmp_path / "x.qpack", "2 unexpected bytes")
    (tmp_path / "g.qpack").write_bytes(struct.pack("<Q", 2**63) + data[8:])
    _refused(tmp_path / "g.qpack", "header length")


def test_refuses_unsupported_version_and_format(tmp_path, sample_file):
    _refused(_rewrite(sample_file, tmp_path / "v.qpack", lambda a, d: d.update(format_version=3)),
             "unsupported qpack format_version 3")
    _refused(_rewrite(sample_file, tmp_path / "f.qpack", lambda a, d: d.update(format="other")), "format 'other'")
    _refused(_rewrite(sample_file, tmp_path / "k.qpack", lambda a, d: d.update(extra=1)), "keys")


def test_refuses_tampered_tensors(tmp_path, sample_file):
    def flip(arrays, doc):
        b = arrays["conv1.bias"].copy()
        b[1] = 0.5
        arrays["conv1.bias"] = b

    _refused(_rewrite(sample_file, tmp_path / "c.qpack", flip, fix_checksum=False), "checksum mismatch")
    data = bytearray(sample_file.read_bytes())
    data[-1] ^= 0x10  # the last tensor's last byte
    (tmp_path / "b.qpack").write_bytes(bytes(data))
    _refused(tmp_path / "b.qpack", "checksum mismatch")


def _set(key, value):
    return lambda arrays, doc: arrays.__setitem__(key, value)


def _entry(name, **changes):
    return lambda arrays, doc: doc["manifest"][name].update(changes)


def test_refuses_manifest_tensor_disagreements(tmp_path, sample_file):
    cases = [
        (_set("fc.weight.codes", np.zeros(40, np.int8)), "fc.weight", "is I8 [40], the manifest needs U8 [40]"),
        (_set("fc.weight.codes", np.zeros(41, np.uint8)), "fc.weight", "is U8 [41], the manifest needs U8 [40]"),
        (_set("conv1.weight.scale", np.ones(3, np.float32)), "conv1.weight", "the manifest needs F32 [4]"),
        (_set("fc.weight.scale", np.ones((5, 2), np.float32)), "fc.weight", "needs F16 [5, 2]"),
        (_set("head.weight.zero_point", np.zeros((), np.int8)), "head.weight", "needs U8 []"),
        (_entry("fc.weight", bits=9), "fc.weight", "bits 9 out of 2..8"),
        (_entry("fc.weight", bits=1, packing="2-bit fields, low bits first"), "fc.weight", "bits 1 out of 2..8"),
        (_entry("fc.weight", qmin=-9), "fc.weight", "inconsistent with bits=4 signed=True"),
        (_entry("fc.weight", signed=False), "fc.weight", "inconsistent with bits=4 signed=False"),
        (_entry("fc.weight", shape=[5, 15]), "fc.weight", "size 8 does not divide"),
        (_entry("fc.weight", shape=[5, 24]), "fc.weight", "needs U8 [60]"),
        (_entry("fc.weight", packing="8-bit fields, low bits first"), "fc.weight", "packing"),
        (_entry("fc.weight", granularity={"kind": "per_channel", "axis": 2}), "fc.weight", "axis 2 is out of range"),
        (_entry("fc.weight", granularity={"kind": "per_block"}), "fc.weight", "invalid granularity"),
        (_entry("fc.weight", scale_dtype="float64"), "fc.weight", "scale_dtype"),
        (_entry("fc.weight", encoding="codebook"), "fc.weight", "encoding"),
        (_entry("fc.weight", tensors={"codes": "fc.weight.codes", "scale": "other"}), "fc.weight", "expected 'fc.weight.scale'"),
    ]
    for i, (mutate, name, fragment) in enumerate(cases):
        _refused(_rewrite(sample_file, tmp_path / f"m{i}.qpack", mutate), f"tensor {name!r}", fragment)


def test_refuses_bad_values(tmp_path, sample_file):
    def narrow(arrays, doc):  # int8 codes include -128; the manifest now says qmin = -127
        codes = np.array([-128] + [0] * 107, np.int8).view(np.uint8)
        arrays["conv1.weight.codes"] = codes
        doc["manifest"]["conv1.weight"]["qmin"] = -127

    _refused(_rewrite(sample_file, tmp_path / "r.qpack", narrow), "'conv1.weight'", "codes in [-128, 0] outside [qmin, qmax] = [-127, 127]")

    def pad(arrays, doc):  # head: 21 3-bit codes in 4-bit fields, 11 bytes: the high nibble of the last is padding
        c = arrays["head.weight.codes"].copy()
        c[-1] |= 0xF0
        arrays["head.weight.codes"] = c

    _refused(_rewrite(sample_file, tmp_path / "p.qpack", pad), "'head.weight'", "padding bits")
    _refused(_rewrite(sample_file, tmp_path / "z.qpack", _set("head.weight.zero_point", np.full((), 9, np.uint8))),
             "'head.weight'", "zero points in [9, 9] outside [0, 7]")
    _refused(_rewrite(sample_file, tmp_path / "s.qpack", _set("conv1.weight.scale", np.array([1, np.nan, 1, 1], np.float32))),
             "'conv1.weight'", "non-finite or non-positive")
    _refused(_rewrite(sample_file, tmp_path / "n.qpack", _set("conv1.weight.scale", np.array([1, 0, 1, 1], np.float32))),
             "'conv1.weight'", "non-positive")


def test_refuses_missing_extra_and_colliding_tensors(tmp_path, sample_file):
    _refused(_rewrite(sample_file, tmp_path / "m.qpack", lambda a, d: a.pop("fc.weight.scale")),
             "tensor 'fc.weight'", "missing tensor 'fc.weight.scale'")
    _refused(_rewrite(sample_file, tmp_path / "f.qpack", lambda a, d: a.pop("steps")), "missing tensor 'steps'")
    _refused(_rewrite(sample_file, tmp_path / "e.qpack", _set("sneaky", np.zeros(2, np.float32))), "unknown tensor 'sneaky'")

    def collide(arrays, doc):
        arrays["fc.weight.scale"] = arrays["fc.weight.scale"]
        doc["floats"]["fc.weight.scale"] = {"dtype": "float16", "shape": [5, 2]}

    _refused(_rewrite(sample_file, tmp_path / "c.qpack", collide), "'fc.weight.scale'", "collides")


def test_writer_refuses_bad_input(tmp_path):
    path = str(tmp_path / "w.qpack")
    p = _packed("x", (4, 4), 4, True, {"kind": "per_channel", "axis": 0})
    with pytest.raises(QPackError, match=r"'x\.codes' of plain tensor 'x\.codes' collides with packed tensor 'x'"):
        write_qpack(path, [p], {"x.codes": np.zeros(3, np.float32)}, {})
    with pytest.raises(QPackError, match="also a packed tensor"):
        write_qpack(path, [p], {"x": np.zeros(3, np.float32)}, {})
    with pytest.raises(QPackError, match="packed twice"):
        write_qpack(path, [p, p], {}, {})
    bad = [
        ({"codes": p.codes + 8}, "outside \\[qmin, qmax\\]"),
        ({"codes": p.codes.astype(np.float32)}, "integer array"),
        ({"scale": p.scale.astype(np.float64)}, "float32 or float16"),
        ({"scale": p.scale[:3], "zero_point": np.zeros(3)}, "the manifest needs F32 \\[4\\]"),
        ({"zero_point": np.full(4, 0.5)}, "integer-valued"),
        ({"zero_point": np.full(4, 9.0)}, "outside"),
        ({"granularity": {"kind": "per_group", "size": 3}}, "does not divide"),
        ({"bits": 9}, "bits"),
        ({"qmin": -9}, "outside|inconsistent"),
        ({"scale": np.array([1, 1, 1, 1e-30], np.float32).astype(np.float16)}, "non-positive"),
    ]
    for change, pattern in bad:
        q = PackedTensor(**{**p.__dict__, **change})
        with pytest.raises(QPackError, match=pattern):
            write_qpack(path, [q], {}, {})
    with pytest.raises(QPackError, match="meta is not JSON"):
        write_qpack(path, [p], {}, {"x": float("nan")})
    with pytest.raises(QPackError, match="cannot store"):
        write_qpack(path, [p], {"s": np.array(["a"])}, {})
    assert not os.path.exists(path) and os.listdir(tmp_path) == []
    with pytest.raises(QPackError, match="cannot write"):
        write_qpack(str(tmp_path / "no" / "such" / "dir.qpack"), [p], {}, {})


# --------------------------------------------------------------------------- fuzzing

FUZZ_EXAMPLES = {"flip": 1200, "truncate": 400, "splice": 800, "length": 400, "json": 1200}
_SLOW = 10.0  # seconds: a generous bound per read_qpack call on a ~3 KB file (catches a reader that loops or
# allocates what a length field claims; a normal read takes milliseconds, 2 s flaked once on an overloaded machine)


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    path = d / "base.qpack"
    write_qpack(str(path), *_sample())
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return d, data, json.loads(data[8 : 8 + n]), data[8 + n :]


def _check_read(d: Path, data: bytes):
    path = d / "mutant.qpack"
    path.write_bytes(data)
    t0 = time.perf_counter()
    try:
        qp = read_qpack(str(path))
        assert isinstance(qp, QPack)
    except QPackError as e:
        assert str(path) in str(e)
    assert time.perf_counter() - t0 < _SLOW




def _fuzz(kind: str):
    return settings(max_examples=FUZZ_EXAMPLES[kind], deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@given(st.data())
@_fuzz("flip")
def test_fuzz_flip_bytes(fuzz_base, data):
    d, base, _, _ = fuzz_base
    buf = bytearray(base)
    n_header = 8 + struct.unpack("<Q", base[:8])[0]
    region = data.draw(st.sampled_from(["anywhere", "header", "data"]))
    lo, hi = {"anywhere": (0, len(buf)), "header": (0, n_header), "data": (n_header, len(buf))}[region]
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(lo, hi - 1))
        buf[i] ^= data.draw(st.integers(1, 255))
    _check_read(d, bytes(buf))


@given(st.data())
@_fuzz("truncate")
def test_fuzz_truncate(fuzz_base, data):
    d, base, _, _ = fuzz_base
    _check_read(d, base[: data.draw(st.integers(0, len(base) - 1))])


@given(st.data())
@_fuzz("splice")
def test_fuzz_insert_delete(fuzz_base, data):
    d, base, _, _ = fuzz_base
    i = data.draw(st.integers(0, len(base)))
    if data.draw(st.booleans()):
        out = base[:i] + data.draw(st.binary(min_size=1, max_size=16)) + base[i:]
    else:
        out = base[:i] + base[i + data.draw(st.integers(1, 64)) :]
    _check_read(d, out)


@given(st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 4096), st.sampled_from([2**63, 2**64 - 1, 10**8, 10**8 + 1])))
@_fuzz("length")
def test_fuzz_header_length(fuzz_base, n):
    d, base, _, _ = fuzz_base
    _check_read(d, struct.pack("<Q", n) + base[8:])


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12)
    | st.sampled_from([0, 1, -1, 2, 4, 8, 9, 255, 256, "U8", "I8", "F16", "F32", "float16", "per_channel", "codes", [], {}]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)


def _paths(obj, prefix=()):
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@given(st.data())
@_fuzz("json")
def test_fuzz_json_values(fuzz_base, data):
    """Replace or delete one value anywhere in the safetensors header or the qpack document (the tensor
    bytes and thus the checksum stay valid, so the mutation reaches the manifest checks)."""
    d, _, header, body = fuzz_base
    header = json.loads(json.dumps(header))
    root = {"header": header, "doc": json.loads(header["__metadata__"]["qpack"])}
    path = data.draw(st.sampled_from(_paths(root)[1:]))
    parent = root
    for k in path[:-1]:
        parent = parent[k]
    if data.draw(st.booleans()) or not path[1:]:
        parent[path[-1]] = data.draw(_JSON)
    else:
        del parent[path[-1]]
    md = root["header"].get("__metadata__") if isinstance(root["header"], dict) else None
    if path[:2] != ("header", "__metadata__") and isinstance(md, dict):
        md["qpack"] = json.dumps(root["doc"], sort_keys=True, separators=(",", ":"))
    text = json.dumps(root["header"], separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    _check_read(d, struct.pack("<Q", len(text)) + text + body)


# --------------------------------------------------------------------------- CLI


def test_cli_inspect(sample_file, tmp_path):
    from typer.testing import CliRunner

    from qgraph.cli import app

    res = CliRunner().invoke(app, ["inspect", str(sample_file)])
    assert res.exit_code == 0, res.output
    out = res.output
    for frag in ("tensor", "bits", "granularity", "ratio", "conv1.weight", "int8", "per-channel(axis=0)", "4x3x3x3",
                 "per-group(8)", "uint3", "per-group(4, axis=0)", "float16", "total", "recipe w4a16", "qgraph 0.1"):
        assert frag in out, f"{frag!r} missing from\n{out}"
    line = next(ln for ln in out.splitlines() if ln.startswith("fc.weight"))
    assert line.split()[-2:] == ["60", f"{5 * 16 * 4 / 60:.2f}x"]  # 40 packed bytes + 10 float16 scales
    (tmp_path / "bad.qpack").write_bytes(b"garbage!garbage!")
    res = CliRunner().invoke(app, ["inspect", str(tmp_path / "bad.qpack")])
    assert res.exit_code == 1
    assert res.output.count("\n") == 1 and "error: QPackError" in res.output and "not a safetensors file" in res.output
