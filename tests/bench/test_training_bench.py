"""Tests of the training benchmark (bench/training.py), run in its --smoke mode."""

from __future__ import annotations

import contextlib
import io
import json

import jax
import pytest

from bench import training as bench_training

PROGRAMS = ["forward", "mezo_sgd", "mezo_adam", "adam_first_order"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """``python -m bench.training --smoke --json FILE``, run once: (rows, JSON, stdout)."""
    path = tmp_path_factory.mktemp("bench") / "training.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rows = bench_training.main(["--smoke", "--json", str(path)])
    return rows, json.loads(path.read_text()), out.getvalue()


def test_smoke_json_has_one_row_per_program(smoke_run):
    rows, doc, table = smoke_run
    assert [r["program"] for r in doc["rows"]] == PROGRAMS == [r["program"] for r in rows]
    meta = doc["meta"]
    assert meta["smoke"] is True and meta["benchmark"] == "training" and meta["repeats"] == 1
    assert meta["jax"] == jax.__version__
    assert all(name in table for name in PROGRAMS)
    for row in doc["rows"]:
        assert row["layers"] == bench_training.SMOKE_LAYERS
        assert row["largest_leaf_fraction"] <= 0.25
        assert row["time_ms"] > 0 and row["memory_mb"] > 0


def test_memory_is_arguments_plus_outputs_minus_aliased_plus_temporaries(smoke_run):
    for row in smoke_run[1]["rows"]:
        total = row["argument_mb"] + row["output_mb"] - row["alias_mb"] + row["temp_mb"]
        assert row["memory_mb"] == pytest.approx(total)


def test_mezo_sgd_donates_params_and_needs_less_memory_than_adam(smoke_run):
    by_name = {r["program"]: r for r in smoke_run[1]["rows"]}
    sgd, adam = by_name["mezo_sgd"], by_name["adam_first_order"]
    assert sgd["alias_mb"] == pytest.approx(sgd["params_mb"], rel=1e-6)
    assert sgd["memory_mb"] < adam["memory_mb"]
    assert by_name["mezo_adam"]["memory_mb"] > sgd["memory_mb"] + 1.9 * sgd["params_mb"]
    # Forward holds the params and the activations; the MeZO step must not hold z or every
    # perturbed leaf on top (2.5x would mean it did).
    assert sgd["memory_vs_forward"] < 2.5


def test_rejects_models_whose_largest_tensor_is_over_a_quarter_of_the_params():
    with pytest.raises(SystemExit):
        bench_training.parse_args(["--layers", "3"])
