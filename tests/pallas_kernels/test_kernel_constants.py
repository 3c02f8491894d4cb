"""Kernel files restate format constants (pallas_kernels imports only jax); pin them equal.

Every UPPER_CASE integer of a kernel module whose name the format also defines must have the
format's value (version-1 ops against ``ecf8_jax/format/constants.py``, version-2 ops against
``ecf8_jax/format/grouped.py`` first); constants the kernels spell differently are listed by
hand.
"""

from __future__ import annotations

import importlib
import pathlib
import pkgutil

import pytest

import pallas_kernels
from ecf8_jax.format import constants, grouped
from pallas_kernels.ecf8_decode import reference as v1_reference
from pallas_kernels.ecf8_matmul import pallas_gpu as v1_matmul
from pallas_kernels.ecf8_matmul import reference as v1_matmul_reference
from pallas_kernels.grouped_decode import reference as v2_reference
from pallas_kernels.grouped_matmul import pallas_gpu as v2_gemv

FORMAT_OF_OP = {
    "ecf8_decode": (constants,),
    "ecf8_matmul": (constants,),
    "grouped_decode": (grouped, constants),
    "grouped_matmul": (grouped, constants),
}


KERNELS_DIR = pathlib.Path(pallas_kernels.__file__).parent


def _kernel_modules():
    for op in FORMAT_OF_OP:
        for info in pkgutil.iter_modules([str(KERNELS_DIR / op)]):
            yield f"pallas_kernels.{op}.{info.name}"


def test_every_op_folder_has_a_format_to_compare_with():
    ops = {info.name for info in pkgutil.iter_modules([str(KERNELS_DIR)]) if info.ispkg}
    assert ops == set(FORMAT_OF_OP)


@pytest.mark.parametrize("module_name", sorted(_kernel_modules()))
def test_kernel_constants_named_like_the_format_have_its_values(module_name):
    module = importlib.import_module(module_name)
    formats = FORMAT_OF_OP[module_name.split(".")[1]]
    for name, value in vars(module).items():
        if not name.isupper() or not isinstance(value, int) or isinstance(value, bool):
            continue
        for fmt in formats:
            if hasattr(fmt, name):
                assert value == getattr(fmt, name), (module_name, name, fmt.__name__)
                break


def test_kernel_constants_spelled_differently_match_the_format():
    # version 1
    assert v1_reference.UNIT_BITS == constants.UNIT_BITS
    assert v1_reference.SIGN_WORD_BITS == constants.SIGN_WORD_BITS
    assert v1_reference.NUM_SYMBOLS == constants.NUM_SYMBOLS
    assert v1_matmul.LANES == v1_matmul_reference.LANES == constants.LANES
    assert v1_matmul.SLAB_ROWS == constants.SIGN_WORD_BITS
    # version 2 (the rest is in test_grouped_decode.py)
    assert v2_reference.GROUP == grouped.GROUP
    assert v2_reference.LUT_SIZE == grouped.LUT_SIZE
    assert v2_gemv.LANES == constants.LANES
    assert v2_gemv.GROUP_WEIGHTS == grouped.GEMV_COLUMNS
