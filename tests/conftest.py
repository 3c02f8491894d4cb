"""Shared pytest setup: jax persistent compilation cache and marker handling.

The cache lives in the user's cache folder, ``${XDG_CACHE_HOME:-~/.cache}/ecf8-jax/jax-tests``,
outside the checkout, so that a second ``make test`` on a machine -- from the same checkout or a
fresh clone -- skips most XLA compiles (as pip's cache skips downloads). A cache entry's key is
the compiled program, its compile options and the jax/jaxlib versions, so entries from other
commits or from ``.venv`` / ``.venv-oldest`` (``make test`` runs both at once) are simply not
found, never wrongly reused. Set ``JAX_COMPILATION_CACHE_DIR`` to use another folder; this
module exports the folder it chose, so subprocesses that tests start (the CLI, the 8-device
sharding runs) use it too. Under pytest-xdist (``make test`` runs ``-n 2 --dist worksteal``) each worker has its own
subfolder (``gw0``, ``gw1``): a worker starts on its own half of the collection, so a rerun finds
most of its programs, and no two processes write one cache entry at once (jax writes entries in
place, so a reader could see half a file).

The ``oldest`` marker selects what ``.venv-oldest`` (the oldest supported jax, flax, orbax and
the torch references) runs: the areas where versions differ (:data:`OLDEST_AREAS`, also listed
in the Makefile), every ``torch`` test, and a smoke of the rest (:data:`OLDEST_SMOKE`, or a test
marked ``@pytest.mark.oldest`` itself).

This must run before the first jit compile, which is why it lives at the top of conftest.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib

# pip libtpu (the kernelcost extra) makes every jax process on a host without a TPU try to start
# one and print libtpu's warnings, in subprocesses too (the CLI's one-line-error tests read
# stderr). Compiling for a TPU topology works without the TPU backend, so tests run on the CPU
# backend unless a GPU plugin is installed or JAX_PLATFORMS says otherwise.
if importlib.util.find_spec("jax_plugins") is None:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# No network at test time: Hugging Face libraries read local folders only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_USER_CACHE = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_USER_CACHE / "ecf8-jax" / "jax-tests"))
_CACHE_DIR = os.environ["JAX_COMPILATION_CACHE_DIR"]
if os.environ.get("PYTEST_XDIST_WORKER"):  # set by pytest-xdist in each worker process
    _CACHE_DIR = os.path.join(_CACHE_DIR, os.environ["PYTEST_XDIST_WORKER"])

OLDEST_AREAS = (
    "tests/pallas_kernels/",  # kernels and their lowering: Pallas changes between jax versions
    "tests/format/",  # numerics of the encoder/decoder: bit-exact round trips, properties
    "tests/test_checkpoint.py",  # Orbax storage and restore (orbax version-sensitive)
    "tests/models/test_llama_vs_hf.py",  # torch parity (the Hugging Face reference)
    "tests/nn/test_layers.py",  # the ECF8 layers in flax NNX (lowering, flax version)
    "tests/test_import_structure.py",  # the import rules hold on every supported version
)
"""Paths (relative to the repository) whose tests also run in ``.venv-oldest``."""

OLDEST_SMOKE = (
    "tests/cli/test_cli.py::test_decompress_reproduces_the_file_byte_for_byte",  # console script
    "tests/nn/test_adapters.py::test_untrained_lora_changes_nothing_and_only_the_adapter_gets",
    "tests/training/test_mezo.py::test_z_is_the_same_with_and_without_jit_vmap",  # PRNG numerics
    "tests/training/test_mezo.py::test_step_does_not_retrace_after_the_first_call",
    "tests/training/test_meerkat.py::test_server_virtual_paths_match_what_the_clients_computed",
    "tests/io/test_container.py::test_a_model_folder_packs_verifies_and_unpacks_byte_for_byte",
)
"""Test ids (prefixes) run in ``.venv-oldest`` as a smoke of the areas outside OLDEST_AREAS.

Not here: the Qwen3 ECF8-vs-FP8 logits test of tests/models/test_llama.py (6 % of the
``.venv-oldest`` run's test time): that venv already runs the Qwen3 model against transformers
(test_llama_vs_hf.py) and the ECF8 layers bit for bit (tests/nn/test_layers.py)."""

OLDEST_TPU_INTERPRET_SKIP = (
    "tests/pallas_kernels/test_grouped_decode.py::test_every_backend_decodes_every_case_bit_exactly[",
    "tests/pallas_kernels/test_grouped_decode.py::test_kernels_match_the_reference_on_padding_and_",
    "tests/pallas_kernels/test_grouped_decode.py::test_tpu_kernel_with_several_vregs_per_program_",
    "tests/pallas_kernels/test_grouped_decode_16bit.py::test_every_backend_decodes_16bit_values_bit_",
    "tests/pallas_kernels/test_grouped_decode_16bit.py::test_16bit_kernels_match_the_reference_on_",
    "tests/pallas_kernels/test_grouped_gemv_tpu.py::test_tpu_fused_gemv_equals_its_raw_twin_bit_",
)
"""Tests that run the version-2 Mosaic TPU decode (or the fused GEMV built on it) in Pallas
interpret mode: on jax < 0.11 (``.venv-oldest``) that interpreter does not finish them since the
2026-12-02 kernel rewrite (``program_start`` / ``decode_groups``): a one-weight decode ran 20 CPU
minutes without finishing, while jax 0.12 runs it in seconds and the same kernel compiles with
libtpu for v5e/v6e. Those with ``pallas_tpu`` in their id (or, for the last three, always) are
skipped there; ``.venv`` runs every one of them."""


def _oldest_tpu_interpret_skipped(node: str) -> bool:
    if tuple(int(p) for p in jax.__version__.split(".")[:2]) >= (0, 11):
        return False
    hit = next((p for p in OLDEST_TPU_INTERPRET_SKIP if node.startswith(p)), None)
    return hit is not None and (not hit.endswith("[") or "pallas_tpu" in node)


# (option, value). Both exist in jax 0.10.2 and 0.12; each update is tried on its own so a renamed
# option in a future jax only loses that setting instead of breaking collection.
_CACHE_OPTIONS = (
    ("jax_compilation_cache_dir", _CACHE_DIR),
    # Default 1.0 s would skip almost every test-sized program; cache them all.
    ("jax_persistent_cache_min_compile_time_secs", 0.0),
    # -1: no minimum entry size (0 lets jax pick a filesystem-dependent minimum).
    ("jax_persistent_cache_min_entry_size_bytes", -1),
)


def _enable_compilation_cache() -> None:
    pathlib.Path(_CACHE_DIR).mkdir(parents=True, exist_ok=True)
    for name, value in _CACHE_OPTIONS:
        with contextlib.suppress(AttributeError):  # option unknown in this jax version
            jax.config.update(name, value)


_enable_compilation_cache()


def pytest_report_header(config: pytest.Config) -> list[str]:
    import jaxlib

    return [
        f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, backend {jax.default_backend()}",
        f"jax compilation cache: {_CACHE_DIR}",
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests without a GPU backend and `torch` tests without torch/zipnn installed;
    mark `oldest` the tests in :data:`OLDEST_AREAS` and every `torch` test."""
    has_gpu = jax.default_backend() == "gpu"
    has_torch = all(importlib.util.find_spec(m) is not None for m in ("torch", "zipnn"))
    skip_gpu = pytest.mark.skip(reason="needs a GPU backend")
    skip_torch = pytest.mark.skip(reason="needs torch+zipnn (run in .venv-oldest)")
    skip_interpret = pytest.mark.skip(
        reason="jax < 0.11's TPU interpreter does not finish the version-2 TPU kernels "
        "(tests/conftest.py, OLDEST_TPU_INTERPRET_SKIP); .venv runs this test"
    )
    oldest = pytest.mark.oldest
    for item in items:
        where = pathlib.Path(str(item.path)).resolve().relative_to(REPO_ROOT).as_posix()
        node = where + "::" + item.name
        if (
            "torch" in item.keywords
            or any(where.startswith(a) for a in OLDEST_AREAS)
            or any(node.startswith(s) for s in OLDEST_SMOKE)
        ):
            item.add_marker(oldest)
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
        if "torch" in item.keywords and not has_torch:
            item.add_marker(skip_torch)
        if _oldest_tpu_interpret_skipped(node):
            item.add_marker(skip_interpret)
