"""Ahead-of-time compilation from a CPU host: an abstract FP8 model, compiled for TPU v5e."""

from __future__ import annotations

import importlib.util

import jax
import pytest

from bench import aot


def test_fp8_model_builds_abstractly_without_allocating():
    graphdef, state, params = aot.abstract_model("tiny")
    leaves = jax.tree.leaves(state)
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)
    assert params == 75_144
    assert any(str(leaf.dtype) == "float8_e4m3fn" for leaf in leaves)


def test_fp8_model_lowers_for_an_abstract_h200():
    graphdef, state, _ = aot.abstract_model("tiny")
    assert aot.lower_cuda(graphdef, state, seq=4) > 0


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs pip libtpu")
def test_fp8_model_compiles_for_tpu_v5e_with_its_weights_as_arguments():
    graphdef, state, params = aot.abstract_model("tiny")
    mem = aot.compile_tpu(graphdef, state, seq=4)
    assert mem["argument_bytes"] >= params  # FP8 weights, float32 norms and scales
