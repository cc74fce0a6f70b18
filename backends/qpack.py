"""qpack: qgraph's packed-weight file, a safetensors file with a qgraph manifest.

Quantized tensors are stored as bit-packed codes (``<name>.codes``, see ``qpack_pack``) plus their
scales (``<name>.scale``) and non-zero zero points (``<name>.zero_point``); plain tensors (biases,
norms) are stored as they are under their own name. One safetensors metadata key, ``qpack``, holds
a canonical JSON document: the manifest (bits, range, shape, granularity of every packed tensor),
the dtype and shape of every plain tensor, the caller's ``meta`` and a SHA-256 over every tensor.

Writing is deterministic (same inputs, same bytes, in any process); reading never executes code,
checks everything and raises only ``QPackError``. The format is specified in docs/qpack.md.

This module reads, writes and validates the format. Its parts live beside it: the bit packing in
``qpack_pack``, the types in ``qpack_types`` (``PackedTensor`` and ``QPack`` are re-exported here),
the N:M sparse encoding in ``qpack_nm``, the ``qgraph inspect`` listing in ``qpack_describe``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from collections.abc import Iterable, Mapping

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, which safetensors' numpy loader needs)
import numpy as np
from qgraph.backends.qpack_nm import nm_compress, nm_expand, nm_index_bits, nm_kept
from qgraph.backends.qpack_pack import field_width, pack_bits, packed_length, padding_is_zero, unpack_bits
from qgraph.backends.qpack_types import ManifestEntry, PackedTensor, QPack

from qgraph.errors import QPackError

__all__ = ["PackedTensor", "QPack", "write_qpack", "read_qpack", "pack_bits", "unpack_bits", "FORMAT", "FORMAT_VERSION"]

FORMAT = "qgraph.qpack"
FORMAT_VERSION = 2  # the newest version this qgraph reads; files without N:M entries are still written as version 1
READ_VERSIONS = (1, 2)
META_KEY = "qpack"
MAX_HEADER = 100_000_000  # safetensors refuses longer headers ("header too large")
ROLES = ("codes", "scale", "zero_point", "codebook", "nm_indices")
# safetensors dtype code -> numpy dtype name, for every dtype a qpack may hold
DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32",
          "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool"}
CODES = {v: k for k, v in DTYPES.items()}
# complex plain tensors (a RoPE table's freqs_cis), which safetensors cannot hold: stored as their real view
# (a trailing dim of 2: real, imaginary) of this real dtype, and listed under their own dtype and shape
COMPLEX = {"complex64": "float32", "complex128": "float64"}
SCALE_DTYPES = ("float32", "float16")
_DOC_KEYS = {"format", "format_version", "qgraph_version", "manifest", "floats", "meta", "checksum"}
_ENTRY_KEYS = {"bits", "qmin", "qmax", "signed", "shape", "granularity", "scale_dtype", "packing", "tensors", "encoding"}


# --------------------------------------------------------------------------- shared checks


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _shape(v, what: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(_is_int(d) and d >= 0 for d in v):
        raise ValueError(f"{what} must be a list of non-negative integers, got {v!r}")
    return tuple(v)


def integer_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def scale_shape(gran, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The scale (and zero point) shape that granularity JSON ``gran`` gives a tensor of ``shape``."""
    kind = gran.get("kind") if isinstance(gran, dict) else None
    if kind == "per_tensor" and set(gran) == {"kind"}:
        return ()
    if kind == "per_channel" and set(gran) == {"kind", "axis"} and _is_int(gran["axis"]):
        if not -len(shape) <= gran["axis"] < len(shape):
            raise ValueError(f"per_channel axis {gran['axis']} is out of range for shape {list(shape)}")
        return (shape[gran["axis"]],)
    if kind == "per_group" and set(gran) in ({"kind", "size"}, {"kind", "size", "axis"}):
        size, axis = gran["size"], gran.get("axis", -1)
        if not (_is_int(size) and size > 0 and _is_int(axis)):
            raise ValueError(f"invalid per_group granularity {gran!r}")
        if not -len(shape) <= axis < len(shape):
            raise ValueError(f"per_group axis {axis} is out of range for shape {list(shape)}")
        if shape[axis] % size:
            raise ValueError(f"per_group size {size} does not divide dimension {shape[axis]} of shape {list(shape)}")
        out = list(shape)
        out[axis] //= size
        return tuple(out)
    raise ValueError(f"invalid granularity {gran!r}")


def _check_entry(name: str, e, version: int = FORMAT_VERSION) -> ManifestEntry:
    """Validate one manifest entry (raises ValueError with the problem)."""
    if not isinstance(e, dict) or not _ENTRY_KEYS <= set(e) or not set(e) <= _ENTRY_KEYS | {"nm"}:
        keys = sorted(e) if isinstance(e, dict) else type(e).__name__
        raise ValueError(f"manifest entry must have keys {sorted(_ENTRY_KEYS)} (and optionally 'nm'), got {keys}")
    bits, qmin, qmax, signed = e["bits"], e["qmin"], e["qmax"], e["signed"]
    if not _is_int(bits) or not 2 <= bits <= 8:
        raise ValueError(f"bits {bits!r} out of 2..8")
    if not isinstance(signed, bool) or not _is_int(qmin) or not _is_int(qmax):
        raise ValueError(f"signed must be a boolean and qmin/qmax integers, got {signed!r}, {qmin!r}, {qmax!r}")
    lo, hi = integer_range(bits, signed)
    if not lo <= qmin <= qmax <= hi or signed != (qmin < 0):
        raise ValueError(f"qmin/qmax [{qmin}, {qmax}] inconsistent with bits={bits} signed={signed} (range [{lo}, {hi}])")
    shape = _shape(e["shape"], "shape")
    sshape = scale_shape(e["granularity"], shape)
    width = field_width(bits)
    if e["packing"] != f"{width}-bit fields, low bits first":
        raise ValueError(f"packing {e['packing']!r} is not '{width}-bit fields, low bits first' (bits={bits})")
    if e["scale_dtype"] not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype {e['scale_dtype']!r} is not one of {SCALE_DTYPES}")
    tensors = e["tensors"]
    if not isinstance(tensors, dict) or not {"codes", "scale"} <= set(tensors) or not set(tensors) <= set(ROLES):
        raise ValueError(f"tensors must map roles {ROLES} (codes and scale required) to keys, got {tensors!r}")
    for role, key in tensors.items():
        if key != f"{name}.{role}":
            raise ValueError(f"tensors[{role!r}] is {key!r}, expected {name + '.' + role!r}")
    encoding = "codebook" if "codebook" in tensors else "affine"
    if e["encoding"] != encoding:
        raise ValueError(f"encoding {e['encoding']!r} but the tensors make it {encoding!r}")
    if encoding == "codebook" and signed:
        raise ValueError("codebook codes index the codebook and must be unsigned")
    nm = e.get("nm")
    stored = math.prod(shape)
    if nm is not None:
        if version < 2:
            raise ValueError("N:M entries ('nm') need format_version 2")
        if not isinstance(nm, dict) or set(nm) != {"n", "m"}:
            raise ValueError(f"nm must have keys n, m, got {nm!r}")
        n, m = nm["n"], nm["m"]
        if not (_is_int(n) and _is_int(m) and 1 <= n < m <= 256):
            raise ValueError(f"invalid nm {nm!r} (need integers 1 <= n < m <= 256)")
        stored = nm_kept(shape, n, m)
    if (nm is not None) != ("nm_indices" in tensors):
        raise ValueError("'nm' needs an nm_indices tensor, and nm_indices needs 'nm'")
    expect = {"codes": ("U8", (packed_length(stored, bits),)),
              "scale": (CODES[e["scale_dtype"]], sshape),
              "zero_point": ("I8" if signed else "U8", sshape),
              "codebook": ("F32", (2**bits,))}
    if nm is not None:
        expect["nm_indices"] = ("U8", (packed_length(stored, nm_index_bits(nm["m"])),))
    expect = {role: expect[role] for role in tensors}
    return ManifestEntry(name, bits, qmin, qmax, signed, shape, dict(e["granularity"]), nm, expect)


def _check_doc(doc, specs: Mapping[str, tuple[str, tuple[int, ...]]], label: str) -> tuple[list[ManifestEntry], dict]:
    """Validate the qpack document against the file's tensors ``specs`` (key -> (dtype code, shape)).

    Returns the checked packed entries and the floats manifest; raises QPackError naming the problem.
    """
    if not isinstance(doc, dict):
        raise QPackError(f"{label}: qpack metadata is a JSON {type(doc).__name__}, not an object")
    if doc.get("format") != FORMAT:
        raise QPackError(f"{label}: qpack metadata names format {doc.get('format')!r}, not {FORMAT!r}")
    version = doc.get("format_version")
    if not _is_int(version) or version not in READ_VERSIONS:
        raise QPackError(f"{label}: unsupported qpack format_version {version!r} "
                         f"(this qgraph reads versions {', '.join(map(str, READ_VERSIONS))})")
    if set(doc) != _DOC_KEYS:
        raise QPackError(f"{label}: qpack metadata has keys {sorted(doc)}, expected {sorted(_DOC_KEYS)}")
    for k, t in (("qgraph_version", str), ("manifest", dict), ("floats", dict), ("meta", dict), ("checksum", str)):
        if not isinstance(doc[k], t):
            raise QPackError(f"{label}: qpack metadata {k!r} must be a JSON {t.__name__}, got {type(doc[k]).__name__}")
    owner: dict[str, str] = {}  # file key -> the manifest name it belongs to
    entries = []
    for name, e in doc["manifest"].items():
        try:
            entry = _check_entry(name, e, version)
        except (ValueError, TypeError, KeyError) as err:
            raise QPackError(f"{label}: tensor {name!r}: bad manifest entry: {err}") from err
        entries.append(entry)
        for role in entry.expect:
            owner[f"{name}.{role}"] = name
    floats = doc["floats"]
    for name, fe in floats.items():
        if name in doc["manifest"] or name in owner or name == "__metadata__":
            raise QPackError(f"{label}: tensor {name!r}: plain tensor name collides with a packed tensor or its parts")
        if not isinstance(fe, dict) or set(fe) != {"dtype", "shape"} or not isinstance(fe["dtype"], str) \
                or fe["dtype"] not in CODES and fe["dtype"] not in COMPLEX:
            raise QPackError(f"{label}: tensor {name!r}: bad floats entry {fe!r}")
        try:
            _shape(fe["shape"], "shape")
        except ValueError as err:
            raise QPackError(f"{label}: tensor {name!r}: bad floats entry: {err}") from err
        owner[name] = name
    expect = {f"{en.name}.{role}": (en.name, want) for en in entries for role, want in en.expect.items()}
    expect.update({name: (name, _stored(fe["dtype"], fe["shape"])) for name, fe in floats.items()})
    for key in sorted(expect):
        if key not in specs:
            raise QPackError(f"{label}: tensor {expect[key][0]!r}: missing tensor {key!r} (listed in the manifest)")
    for key in sorted(specs):
        if key not in expect:
            raise QPackError(f"{label}: unknown tensor {key!r} (not in the qpack manifest)")
    for key in sorted(expect):
        name, (dtype, shape) = expect[key]
        got = specs[key]
        if (got[0], tuple(got[1])) != (dtype, shape):
            raise QPackError(f"{label}: tensor {name!r}: {key!r} is {got[0]} {list(got[1])}, "
                             f"the manifest needs {dtype} {list(shape)}")
    return entries, floats


def _checksum(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over every tensor in sorted key order: ``["key","DTYPE",[shape]]\\n`` then its raw bytes."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = arrays[key]
        h.update(json.dumps([key, CODES[a.dtype.name], list(a.shape)], separators=(",", ":")).encode() + b"\n")
        h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data)
    return "sha256:" + h.hexdigest()


def _decode(entries: list[ManifestEntry], arrays: Mapping[str, np.ndarray], label: str) -> dict[str, PackedTensor]:
    """Check the values of every packed tensor (codes range, padding, scales) and unpack its codes."""
    out = {}
    for en in entries:
        def bad(problem: str, en=en) -> QPackError:
            return QPackError(f"{label}: tensor {en.name!r}: {problem}")

        data = arrays[f"{en.name}.codes"]
        count = math.prod(en.shape) if en.nm is None else nm_kept(en.shape, en.nm["n"], en.nm["m"])
        if not padding_is_zero(data, en.bits, count):
            raise bad("the padding bits after the last code are not zero")
        codes = unpack_bits(data, en.bits, count, en.signed)
        if en.nm is None:
            codes = codes.reshape(en.shape)
        if codes.size and (int(codes.min()) < en.qmin or int(codes.max()) > en.qmax):
            raise bad(f"codes in [{int(codes.min())}, {int(codes.max())}] outside [qmin, qmax] = [{en.qmin}, {en.qmax}]")
        scale = np.array(arrays[f"{en.name}.scale"])
        if not np.all(np.isfinite(scale) & (scale > 0)):
            raise bad("scale has non-finite or non-positive entries")
        zdtype = np.int8 if en.signed else np.uint8
        zp = arrays.get(f"{en.name}.zero_point")
        zp = np.zeros(scale.shape, zdtype) if zp is None else np.array(zp)
        if zp.size and (int(zp.min()) < en.qmin or int(zp.max()) > en.qmax):
            raise bad(f"zero points in [{int(zp.min())}, {int(zp.max())}] outside [{en.qmin}, {en.qmax}]")
        codebook = arrays.get(f"{en.name}.codebook")
        if codebook is not None and not np.all(np.isfinite(codebook)):
            raise bad("codebook has non-finite entries")
        nm = None
        if en.nm is not None:
            codes, nm = nm_expand(en, codes, arrays[f"{en.name}.nm_indices"], zp, bad)
        out[en.name] = PackedTensor(en.name, codes, en.bits, en.qmin, en.qmax, scale, zp, en.granularity,
                                    None if codebook is None else np.array(codebook), nm)
    return out


# --------------------------------------------------------------------------- writing


def _le(a, what: str) -> np.ndarray:
    """A C-contiguous little-endian copy-if-needed of ``a`` with a dtype a qpack can hold."""
    a = np.asarray(a)
    if a.dtype.name not in CODES:
        raise QPackError(f"{what} has dtype {a.dtype}, which a qpack cannot store (one of {sorted(CODES)})")
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return a if a.flags.c_contiguous else a.copy(order="C")  # (np.ascontiguousarray makes 0-d arrays 1-d)


def _encode(pt: PackedTensor, label: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Manifest entry and file tensors of one PackedTensor (shapes are checked later, by ``_check_doc``)."""
    where = f"{label}: tensor {pt.name!r}"
    codes = np.asarray(pt.codes)
    if codes.dtype.kind not in "iu":
        raise QPackError(f"{where}: codes must be an integer array, got {codes.dtype}")
    if not all(_is_int(v) or isinstance(v, np.integer) for v in (pt.bits, pt.qmin, pt.qmax)):
        raise QPackError(f"{where}: bits, qmin, qmax must be integers")
    bits, qmin, qmax = int(pt.bits), int(pt.qmin), int(pt.qmax)
    if codes.size and (int(codes.min()) < qmin or int(codes.max()) > qmax):
        raise QPackError(f"{where}: codes in [{int(codes.min())}, {int(codes.max())}] outside [qmin, qmax] = [{qmin}, {qmax}]")
    if not 2 <= bits <= 8 or not -128 <= qmin <= qmax <= 255:
        raise QPackError(f"{where}: bits {bits} out of 2..8 or qmin/qmax [{qmin}, {qmax}] invalid")
    signed = qmin < 0
    scale = _le(pt.scale, f"{where}: scale")
    if scale.dtype.name not in SCALE_DTYPES:
        raise QPackError(f"{where}: scale must be float32 or float16, got {scale.dtype}")
    zp = np.asarray(pt.zero_point)
    if zp.shape != scale.shape or (zp.size and not np.all(np.isfinite(zp) & (zp == np.round(zp)))):
        raise QPackError(f"{where}: zero_point must be integer-valued with the scale's shape {scale.shape}, "
                         f"got {zp.dtype} {zp.shape}")
    if zp.size and (zp.min() < qmin or zp.max() > qmax):
        raise QPackError(f"{where}: zero points in [{zp.min()}, {zp.max()}] outside [{qmin}, {qmax}]")
    try:
        gran = json.loads(json.dumps(pt.granularity, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise QPackError(f"{where}: granularity is not JSON: {e}") from e
    width = field_width(bits)
    nm = None
    if pt.nm is not None:
        nm, kept, idx = nm_compress(pt, codes, zp, gran, where)
        tensors = {"codes": pack_bits(kept, bits), "scale": scale, "nm_indices": pack_bits(idx, nm_index_bits(nm["m"]))}
    else:
        tensors = {"codes": pack_bits(codes, bits), "scale": scale}
    if np.any(zp != 0):
        tensors["zero_point"] = zp.astype(np.int8 if signed else np.uint8)
    if pt.codebook is not None:
        tensors["codebook"] = _le(pt.codebook, f"{where}: codebook")
        if tensors["codebook"].dtype != np.float32:
            raise QPackError(f"{where}: codebook must be float32, got {tensors['codebook'].dtype}")
    entry = {"bits": bits, "qmin": qmin, "qmax": qmax, "signed": signed, "shape": list(codes.shape),
             "granularity": gran, "scale_dtype": scale.dtype.name, "packing": f"{width}-bit fields, low bits first",
             "encoding": "codebook" if pt.codebook is not None else "affine"}
    if nm is not None:
        entry["nm"] = nm
    entry["tensors"] = {role: f"{pt.name}.{role}" for role in tensors}
    return entry, {f"{pt.name}.{role}": a for role, a in tensors.items()}


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def write_qpack(path: str, packed: Iterable[PackedTensor], floats: Mapping[str, np.ndarray], meta: dict) -> int:
    """Write a qpack file (atomically: safetensors renames a temporary file over ``path``); returns its size.

    The same inputs always give the same bytes. Raises QPackError (before writing anything) for input
    the reader would refuse: codes outside [qmin, qmax], scales that do not match the granularity,
    colliding names, meta that is not JSON, ...
    """
    from safetensors.numpy import save_file

    import qgraph

    label = os.fspath(path)
    manifest: dict = {}
    arrays: dict[str, np.ndarray] = {}
    owner: dict[str, str] = {}

    def add(key: str, a: np.ndarray, who: str) -> None:
        if key in owner or key == "__metadata__":
            raise QPackError(f"{label}: tensor name {key!r} of {who} collides with {owner.get(key, 'a reserved name')}")
        owner[key] = who
        arrays[key] = a

    for pt in packed:
        if not isinstance(pt, PackedTensor) or not isinstance(pt.name, str) or not pt.name:
            raise QPackError(f"{label}: packed tensors must be PackedTensor with a non-empty name, got {pt!r:.80}")
        if pt.name in manifest:
            raise QPackError(f"{label}: tensor {pt.name!r} is packed twice")
        manifest[pt.name], tensors = _encode(pt, label)
        for key, a in tensors.items():
            add(key, a, f"packed tensor {pt.name!r}")
    float_manifest = {}
    for name, a in floats.items():
        if not isinstance(name, str) or not name or name in manifest:
            raise QPackError(f"{label}: plain tensor name {name!r} is empty, not a string or also a packed tensor")
        dtype, shape = np.asarray(a).dtype.name, list(np.shape(a))
        real = np.ascontiguousarray(np.asarray(a, dtype=dtype)).view(COMPLEX[dtype]).reshape(*shape, 2) if dtype in COMPLEX else a
        a = _le(real, f"{label}: tensor {name!r}")
        add(name, a, f"plain tensor {name!r}")
        float_manifest[name] = {"dtype": dtype, "shape": shape}
    try:
        meta = json.loads(json.dumps(meta, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise QPackError(f"{label}: meta is not JSON-serializable: {e}") from e
    version = 2 if any("nm" in e for e in manifest.values()) else 1  # version 1 readers read everything else
    doc = {"format": FORMAT, "format_version": version, "qgraph_version": qgraph.__version__,
           "manifest": manifest, "floats": float_manifest, "meta": meta, "checksum": _checksum(arrays)}
    entries, _ = _check_doc(doc, {k: (CODES[a.dtype.name], a.shape) for k, a in arrays.items()}, label)
    _decode(entries, arrays, label)  # refuse to write what read_qpack would refuse
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    # safetensors writes a 0600 temporary file and renames it over `label` (atomic); give the file the
    # permissions any other newly created file gets
    try:
        save_file(arrays, label, metadata={META_KEY: text})
        os.chmod(label, 0o666 & ~_umask())
        return os.path.getsize(label)
    except Exception as e:  # OSError, safetensors' SafetensorError
        raise QPackError(f"{label}: cannot write: {e}") from e


# --------------------------------------------------------------------------- reading


def _read_header(f, size: int, label: str) -> tuple[dict, dict[str, tuple[str, tuple[int, ...]]], str]:
    """Parse the safetensors header ourselves (for precise messages): returns header, tensor specs, qpack JSON."""
    if size < 8:
        raise QPackError(f"{label}: not a safetensors file ({size} bytes, less than the 8-byte header length)")
    n = int.from_bytes(f.read(8), "little")
    if n > MAX_HEADER:
        raise QPackError(f"{label}: not a safetensors file (header length field says {n} bytes, "
                         f"safetensors allows at most {MAX_HEADER})")
    if 8 + n > size:
        raise QPackError(f"{label}: truncated: the header should end at byte offset {8 + n}, the file ends at {size}")
    raw = f.read(n)
    if not raw.startswith(b"{"):
        raise QPackError(f"{label}: not a safetensors file (the header does not start with '{{')")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise QPackError(f"{label}: not a safetensors file (header is not valid JSON: {e})") from e
    if not isinstance(header, dict):
        raise QPackError(f"{label}: not a safetensors file (header is not a JSON object)")
    specs, end, last = {}, 0, None
    for key, t in header.items():
        if key == "__metadata__":
            continue
        ok = isinstance(t, dict) and isinstance(t.get("dtype"), str) and isinstance(t.get("data_offsets"), list)
        ok = ok and len(t["data_offsets"]) == 2 and all(_is_int(o) and o >= 0 for o in t["data_offsets"])
        try:
            specs[key] = (t["dtype"], _shape(t.get("shape"), "shape")) if ok else None
        except ValueError:
            specs[key] = None
        if specs[key] is None:
            raise QPackError(f"{label}: not a valid safetensors header: tensor {key!r} has entry {t!r:.200}")
        if t["data_offsets"][1] > end:
            end, last = t["data_offsets"][1], key
    if 8 + n + end > size:
        raise QPackError(f"{label}: truncated: tensor {last!r} ends at byte offset {8 + n + end}, the file ends at {size}")
    if 8 + n + end < size:
        raise QPackError(f"{label}: {size - 8 - n - end} unexpected bytes after the tensor data (which ends at offset {8 + n + end})")
    md = header.get("__metadata__")
    if not isinstance(md, dict) or not isinstance(md.get(META_KEY), str):
        some = ", ".join(repr(k) for k in sorted(specs)[:3])
        raise QPackError(f"{label}: a safetensors file but not a qpack (no {META_KEY!r} metadata; "
                         f"{len(specs)} tensors{': ' + some if some else ''})")
    return header, specs, md[META_KEY]


def _read(label: str) -> QPack:
    from safetensors import safe_open

    try:
        if not stat.S_ISREG(os.stat(label).st_mode):  # (opening a FIFO would block)
            raise QPackError(f"{label}: not a regular file")
        f = open(label, "rb")
    except OSError as e:
        raise QPackError(f"{label}: cannot open: {e.strerror or e}") from e
    with f:
        _, specs, text = _read_header(f, os.fstat(f.fileno()).st_size, label)
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise QPackError(f"{label}: qpack metadata is not valid JSON: {e}") from e
    entries, floats = _check_doc(doc, specs, label)
    try:
        with safe_open(label, framework="numpy") as sf:
            arrays = {key: sf.get_tensor(key) for key in specs}
    except Exception as e:
        raise QPackError(f"{label}: safetensors refused the file: {e}") from e
    for key, a in arrays.items():
        if (CODES.get(a.dtype.name), a.shape) != specs[key]:
            raise QPackError(f"{label}: tensor {key!r} loaded as {a.dtype} {a.shape}, the header says {specs[key]}")
    if _checksum(arrays) != doc["checksum"]:
        raise QPackError(f"{label}: checksum mismatch: the tensors are not what was written (file damaged or tampered with)")
    packed = _decode(entries, arrays, label)
    plain = {name: _complex(arrays[name], floats[name]["dtype"]) for name in sorted(floats)}
    return QPack(packed, plain, doc["meta"], doc["qgraph_version"])


def _stored(dtype: str, shape: list[int]) -> tuple[str, tuple[int, ...]]:
    """The (safetensors code, shape) a plain tensor of ``dtype`` and ``shape`` is stored as."""
    if dtype in COMPLEX:
        return CODES[COMPLEX[dtype]], (*shape, 2)
    return CODES[dtype], tuple(shape)


def _complex(a: np.ndarray, dtype: str) -> np.ndarray:
    """A stored plain tensor as it was written: complex ones from their real view."""
    if dtype not in COMPLEX:
        return a
    return np.ascontiguousarray(a).view(dtype).reshape(a.shape[:-1])


def read_qpack(path: str) -> QPack:
    """Read and fully check a qpack file. Never executes code; every failure is a QPackError naming the
    file, the tensor (where there is one) and the problem."""
    label = os.fspath(path)
    try:
        return _read(label)
    except QPackError:
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: B036  (pyo3 panics derive from BaseException)
        raise QPackError(f"{label}: unreadable qpack file ({type(e).__name__}: {e})") from e
