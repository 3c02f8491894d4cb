"""The fused ECF8 matmul: bit-identical to the same tiled kernel fed raw FP8 weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import ecf8_jax
from ecf8_jax.format.codebook import canonical_tables
from pallas_kernels import compat
from pallas_kernels.ecf8_matmul.api import ecf8_matmul
from pallas_kernels.ecf8_matmul.config import BlockSizes
from pallas_kernels.ecf8_matmul.pallas_gpu import tiled_matmul_gpu
from pallas_kernels.ecf8_matmul.reference import fp8_tiled_matmul, matmul_xla

E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E5M2 = np.dtype(ml_dtypes.float8_e5m2)
ON_CPU = jax.default_backend() == "cpu"


def _weight(k, n, dtype, seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((k, n)) * 0.05).astype(dtype).view(np.uint8)
    # Ordinary inputs too: subnormals, the max finite value, -0.
    specials = [0x01, 0x81, 0x7E, 0xFE, 0x80] if dtype == E4M3 else [0x01, 0x81, 0x7B, 0xFB, 0x80]
    idx = rng.integers(0, w.size, 40)
    w.reshape(-1)[idx] = rng.choice(specials, 40)
    return w.view(dtype)


@pytest.mark.parametrize(
    "m, k, n, dtype",
    [(1, 64, 128, E4M3), (3, 80, 256, E4M3), (17, 40, 128, E5M2), (2, 96, 384, E4M3)],
)
def test_fused_matmul_is_bit_identical_to_the_raw_fp8_tiled_kernel(m, k, n, dtype):
    w = _weight(k, n, dtype, seed=m + k)
    rng = np.random.default_rng(k)
    x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
    scale = jnp.asarray(rng.random(n) + 0.5, jnp.float32)
    t = ecf8_jax.encode(w, layout="tiles", chunk_steps=32)
    fused = np.asarray(ecf8_jax.matmul(x, t, scale, implementation="pallas_gpu", interpret=ON_CPU))
    raw = np.asarray(
        fp8_tiled_matmul(
            x, scale, jnp.asarray(w.view(np.uint8)), steps=t.chunk_steps,
            fp8_dtype=jnp.dtype(dtype), interpret=ON_CPU,
        )
    )  # fmt: skip
    assert fused.shape == (m, n)
    np.testing.assert_array_equal(fused.view(np.uint32), raw.view(np.uint32))
    # The value itself: the plain XLA product, up to float32 summation order.
    xla = np.asarray(matmul_xla(x, scale, jnp.asarray(w.view(np.uint8)), jnp.dtype(dtype)))
    np.testing.assert_allclose(fused, xla, rtol=1e-5, atol=1e-5)


def test_xla_implementation_decodes_then_multiplies():
    w = _weight(70, 256, E4M3, seed=1)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 70)), jnp.float32)
    t = ecf8_jax.encode(w, layout="tiles", chunk_steps=32)
    got = np.asarray(ecf8_jax.matmul(x, t, 0.5, implementation="xla"))
    want = np.asarray(matmul_xla(x, jnp.full((256,), 0.5), jnp.asarray(w.view(np.uint8)), E4M3))
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def _lower_fused(t, x, scale, num_warps):
    limits, deltas, symbols = canonical_tables(t.code_lengths, jnp)
    k, n = t.shape

    def f(x, *weights):
        return tiled_matmul_gpu(
            x, scale, weights, tile_source="ecf8", k=k, n=n, steps=t.chunk_steps,
            fp8_dtype=jnp.float8_e4m3fn, num_warps=num_warps,
        )  # fmt: skip

    args = (x, t.chunk_offsets, t.stream, t.signs, limits, deltas, symbols)
    with compat.abstract_device("cuda"):
        return jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize("num_warps", [4, 8])
@pytest.mark.parametrize("m", [1, 64])
def test_fused_and_reference_kernels_lower_for_cuda(num_warps, m):
    w = _weight(64, 256, E4M3, seed=3)
    t = ecf8_jax.encode(w, layout="tiles", chunk_steps=32)
    x = jnp.ones((m, 64), jnp.bfloat16)
    scale = jnp.ones((256,), jnp.float32)
    assert "ecf8_matmul" in _lower_fused(t, x, scale, num_warps)
    w_bytes = jnp.asarray(w.view(np.uint8))
    with compat.abstract_device("cuda"):
        text = (
            jax.jit(
                lambda x, w: fp8_tiled_matmul(x, scale, w, steps=32, fp8_dtype=jnp.float8_e4m3fn)
            )
            .trace(x, w_bytes)
            .lower(lowering_platforms=("cuda",))
            .as_text()
        )
    assert "fp8_tiled_matmul" in text


def test_matmul_refuses_a_flat_layout_weight():
    t = ecf8_jax.encode(_weight(32, 128, E4M3, seed=4))
    with pytest.raises(ecf8_jax.FormatError, match="tiles"):
        ecf8_jax.matmul(jnp.ones((1, 32)), t)


@pytest.mark.skipif(not ON_CPU, reason="checks the CPU host's refusal")
def test_explicit_fused_kernel_fails_fast_without_a_gpu():
    t = ecf8_jax.encode(_weight(32, 128, E4M3, seed=5), layout="tiles", chunk_steps=32)
    with pytest.raises(ValueError, match="needs a GPU"):
        ecf8_jax.matmul(jnp.ones((1, 32)), t, implementation="pallas_gpu")


@pytest.mark.parametrize("split_k", [1, 2, 3])
def test_split_k_keeps_fused_and_raw_kernels_bit_identical(split_k):
    k, n = 96, 256
    w = _weight(k, n, E4M3, seed=6)
    t = ecf8_jax.encode(w, layout="tiles", chunk_steps=32)
    limits, deltas, symbols = canonical_tables(t.code_lengths, jnp)
    x = jnp.asarray(np.random.default_rng(7).standard_normal((5, k)), jnp.float32)
    scale = jnp.asarray(np.random.default_rng(8).random(n) + 0.5, jnp.float32)
    common = dict(k=k, n=n, steps=32, fp8_dtype=jnp.float8_e4m3fn, split_k=split_k)
    fused = tiled_matmul_gpu(
        x, scale, (t.chunk_offsets, t.stream, t.signs, limits, deltas, symbols),
        tile_source="ecf8", interpret=ON_CPU, **common,
    )  # fmt: skip
    raw = tiled_matmul_gpu(
        x, scale, (jnp.asarray(w.view(np.uint8)),), tile_source="raw", interpret=ON_CPU, **common
    )
    np.testing.assert_array_equal(
        np.asarray(fused).view(np.uint32), np.asarray(raw).view(np.uint32)
    )
    xla = np.asarray(matmul_xla(x, scale, jnp.asarray(w.view(np.uint8)), E4M3))
    np.testing.assert_allclose(np.asarray(fused), xla, rtol=1e-5, atol=1e-5)


TRITON_CALL = "__gpu$xla.gpu.triton"  # the custom call a Pallas Triton kernel lowers to


def _lowered_for_cuda_on_a_gpu_host(monkeypatch, implementation):
    """``ecf8_jax.matmul`` traced as if the default backend were a GPU, lowered for CUDA."""
    t = ecf8_jax.encode(_weight(64, 256, E4M3, seed=9), layout="tiles", chunk_steps=32)
    x = jnp.ones((2, 64), jnp.float32)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    f = jax.jit(lambda x, t: ecf8_jax.matmul(x, t, implementation=implementation))
    with compat.abstract_device("cuda"):
        return f.trace(x, t).lower(lowering_platforms=("cuda",)).as_text()


def test_xla_implementation_is_xla_all_the_way_down_on_a_gpu(monkeypatch):
    # "xla" must not reach for the Pallas decode even where the default backend has one.
    text = _lowered_for_cuda_on_a_gpu_host(monkeypatch, "xla")
    assert TRITON_CALL not in text


def test_default_implementation_on_a_gpu_is_the_fused_kernel(monkeypatch):
    text = _lowered_for_cuda_on_a_gpu_host(monkeypatch, None)
    assert text.count(TRITON_CALL) == 1  # the fused kernel alone, no separate decode
    assert "ecf8_matmul" in text


def test_fused_and_raw_kernels_agree_with_explicit_block_sizes():
    w = _weight(64, 256, E4M3, seed=10)
    t = ecf8_jax.encode(w, layout="tiles", chunk_steps=32)
    limits, deltas, symbols = canonical_tables(t.code_lengths, jnp)
    x = jnp.asarray(np.random.default_rng(11).standard_normal((3, 64)), jnp.float32)
    scale = jnp.ones((256,), jnp.float32)
    sizes = BlockSizes(block_m=32, split_k=1)
    got = ecf8_matmul(
        x, scale, t.chunk_offsets, t.stream, t.signs, limits, deltas, symbols,
        k=64, n=256, fp8_dtype=jnp.float8_e4m3fn, implementation="pallas_gpu",
        block_sizes=sizes, interpret=ON_CPU,
    )  # fmt: skip
    raw = fp8_tiled_matmul(
        x, scale, jnp.asarray(w.view(np.uint8)), steps=32, fp8_dtype=jnp.float8_e4m3fn,
        block_sizes=sizes, interpret=ON_CPU,
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(got).view(np.uint32), np.asarray(raw).view(np.uint32))
    assert BlockSizes.get_default(m=3, k=64, steps=32) == BlockSizes(block_m=16, split_k=2)
    assert BlockSizes.get_default(m=100, k=64, steps=32) == BlockSizes(block_m=64, split_k=1)
