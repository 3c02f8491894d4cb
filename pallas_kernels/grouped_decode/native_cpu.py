"""ECF8 version-2 decode on the CPU as a native XLA FFI handler (``native_cpu.cc``).

Why: the plain-jnp reference runs every group of every chunk as a dozen XLA:CPU loops over
``[C, 128]`` arrays (150-600 MB/s of decoded FP8 on one core). The C++ handler decodes a
chunk group by group with 8 or 16 lanes' bit buffers in vector registers (AVX2, AVX-512 with
VBMI; a scalar loop elsewhere, picked at run time): each code is one table read, a few shifts
and an OR. Chunks are spread over XLA's intra-op thread pool.

Numerics: bit-identical to ``reference.grouped_decode_reference`` on every input, malformed
tables, thresholds and offsets included (chunks outside the format's invariant run the
reference's exact uint32/int32 arithmetic with XLA's shift semantics); positions are clamped.

Backend: XLA:CPU only, through ``jax.ffi.ffi_call``. The handler is compiled on first use with
the system C++ compiler (``$CXX``, else ``c++``, else ``g++``) against ``jax.ffi.include_dir()``
into ``$ECF8_CACHE_DIR``, else ``$XDG_CACHE_HOME/ecf8_jax``, else ``~/.cache/ecf8_jax``, named
by a hash of the source, the jax/jaxlib versions, the compiler and its flags, and written with a
temporary file and ``os.replace`` (concurrent processes never see a partial library). Set
``ECF8_NATIVE=0`` to never build or use it. Under ``vmap`` the call loops over the batch
(``vmap_method="sequential"``); under ``lax.scan`` each step is one call.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import threading

import jax
import jax.numpy as jnp

from pallas_kernels.grouped_decode.reference import (
    check_bits,
    groups_per_raw_word,
    kernel_arrays,
    words_per_group,
)

TARGET = "ecf8_grouped_decode_cpu"
"""The FFI target name (platform ``cpu``)."""

SYMBOL = "Ecf8GroupedDecode"
"""The handler symbol ``native_cpu.cc`` exports."""

SOURCE = pathlib.Path(__file__).with_name("native_cpu.cc")

FLAGS = ("-O3", "-shared", "-fPIC", "-std=c++17")
"""Portable code only (no ``-march=native``): the cached library may be shared by machines."""

SIMD_NONE, SIMD_AVX2, SIMD_AVX512 = 0, 1, 2
"""Loops of ``native_cpu.cc``: scalar (any CPU), AVX2, AVX-512 with VBMI, picked at run time."""

ENV_SWITCH = "ECF8_NATIVE"
"""``ECF8_NATIVE=0`` disables the native decoder (the default CPU path is then the reference)."""


class NativeUnavailableError(RuntimeError):
    """The native decoder cannot be used here: disabled, no compiler, or the build failed."""


_lock = threading.Lock()
_registered = False
_failure: NativeUnavailableError | None = None


def enabled() -> bool:
    """False when ``ECF8_NATIVE=0`` (or ``false``/``off``/``no``)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def cache_dir() -> pathlib.Path:
    """Where built libraries are kept (per user)."""
    if os.environ.get("ECF8_CACHE_DIR"):
        return pathlib.Path(os.environ["ECF8_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".cache"
    return root / "ecf8_jax"


def find_compiler() -> str | None:
    """``$CXX``, else ``c++``, else ``g++`` on ``PATH``; None if there is none."""
    for name in (os.environ.get("CXX"), "c++", "g++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _compiler_version(cxx: str) -> str:
    try:
        done = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise NativeUnavailableError(f"C++ compiler {cxx!r} does not run: {e}") from e
    return done.stdout.splitlines()[0] if done.stdout else ""


def library_path(cxx: str) -> pathlib.Path:
    """The cached library for this source, jax, compiler and machine."""
    import jaxlib  # noqa: PLC0415 (jax's own C++ half: its FFI headers)

    key = hashlib.sha256()
    for part in (
        SOURCE.read_bytes(),
        jax.__version__.encode(),
        jaxlib.__version__.encode(),
        jax.ffi.include_dir().encode(),
        cxx.encode(),
        _compiler_version(cxx).encode(),
        " ".join(FLAGS).encode(),
        platform.machine().encode(),
    ):
        key.update(part)
        key.update(b"\0")
    return cache_dir() / f"ecf8_native_cpu-{key.hexdigest()[:20]}.so"


def build() -> pathlib.Path:
    """The compiled library, built now if it is not cached yet.

    Raises:
      NativeUnavailableError: no compiler, or the compiler failed (its message included).
    """
    cxx = find_compiler()
    if cxx is None:
        raise NativeUnavailableError("no C++ compiler found ($CXX, c++, g++)")
    path = library_path(cxx)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.so", dir=path.parent)
    os.close(fd)
    try:
        cmd = [cxx, *FLAGS, "-I", jax.ffi.include_dir(), str(SOURCE), "-o", tmp]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as e:
            raise NativeUnavailableError(f"building {SOURCE.name} failed: {e}") from e
        if done.returncode != 0:
            raise NativeUnavailableError(
                f"building {SOURCE.name} failed ({' '.join(cmd)}):\n{done.stderr.strip()}"
            )
        os.replace(tmp, path)  # atomic: a concurrent build of the same key writes the same file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def ensure_registered() -> None:
    """Builds (once per process) and registers the FFI target for the CPU platform.

    Raises:
      NativeUnavailableError: disabled by ``ECF8_NATIVE=0``, or the build failed (the same
        error again on every later call, without rebuilding).
    """
    global _registered, _failure
    if not enabled():
        raise NativeUnavailableError(f"disabled by {ENV_SWITCH}=0")
    with _lock:
        if _registered:
            return
        if _failure is not None:
            raise _failure
        try:
            lib = ctypes.cdll.LoadLibrary(str(build()))
            capsule = jax.ffi.pycapsule(getattr(lib, SYMBOL))
            jax.ffi.register_ffi_target(TARGET, capsule, platform="cpu")
        except NativeUnavailableError as e:
            _failure = e
            raise
        except (OSError, AttributeError, ValueError) as e:
            _failure = NativeUnavailableError(f"loading the native decoder failed: {e}")
            raise _failure from e
        _registered = True


def unavailable_reason() -> str | None:
    """Why the native decoder cannot be used here, or None if it can (builds it if needed)."""
    try:
        ensure_registered()
    except NativeUnavailableError as e:
        return str(e)
    return None


def grouped_decode_native(
    stream: jax.Array,
    chunk_offsets: jax.Array,
    raw: jax.Array,
    lut: jax.Array,
    threshold: jax.Array,
    *,
    bits: int = 8,
    max_threads: int = 0,
    simd: int = SIMD_AVX512,
    values: bool = False,
) -> jax.Array:
    """Decodes every chunk on the CPU; the contract of ``grouped_decode_reference``.

    Args:
      stream, chunk_offsets, raw, lut, threshold: the raw arrays (see the reference).
      bits: value width, 8 or 16 (static).
      max_threads: at most this many threads per call (0: XLA's intra-op pool and the caller).
      simd: the widest loop to use where the CPU has it: ``SIMD_AVX512`` (default),
        ``SIMD_AVX2`` or ``SIMD_NONE`` (the portable scalar loop); all are bit-identical.
      values: return the values, flat in slot order (``reference.words_to_values``), which
        the handler writes directly: XLA:CPU unpacks uint32 words to bytes element by element,
        which costs as much as the decode itself.

    Returns:
      uint32[C, S * bits // 32, L]; with ``values``, uint8 (``bits = 8``) or uint16
      ``[C * S * L]``.

    Raises:
      NativeUnavailableError: the library cannot be built or loaded (see ``ensure_registered``).
    """
    check_bits(bits)
    ensure_registered()
    chunks, raw_rows, lanes = raw.shape
    groups = raw_rows * groups_per_raw_word(bits)
    shape = (chunks, groups * words_per_group(bits), lanes)
    if values:
        n = chunks * groups * words_per_group(bits) * lanes * (32 // bits)
        shape, dtype = (n,), (jnp.uint8 if bits == 8 else jnp.uint16)
    else:
        dtype = jnp.uint32
    if chunks == 0:
        return jnp.zeros(shape, dtype)
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(shape, dtype), vmap_method="sequential")
    args = kernel_arrays(stream, chunk_offsets, raw, lut, threshold)
    return call(*args, bits=int(bits), max_threads=int(max_threads), simd=int(simd))
