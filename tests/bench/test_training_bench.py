"""Tests of the training benchmark (bench/training.py), run in its --smoke mode."""

from __future__ import annotations

import contextlib
import io
import json

import jax
import pytest

from bench import training as bench_training

PROGRAMS = list(bench_training.PROGRAMS)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """``python -m bench.training --smoke --json FILE``, run once: (rows, JSON, stdout)."""
    path = tmp_path_factory.mktemp("bench") / "training.json"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rows = bench_training.main(["--smoke", "--json", str(path)])
    return rows, json.loads(path.read_text()), out.getvalue()


def by_model(rows):
    """``{(layers, width, batch): {program: row}}``."""
    out = {}
    for row in rows:
        out.setdefault((row["layers"], row["width"], row["batch"]), {})[row["program"]] = row
    return out


def test_smoke_json_has_one_row_per_program_and_model(smoke_run):
    rows, doc, table = smoke_run
    assert [r["program"] for r in doc["rows"]] == [r["program"] for r in rows]
    models = by_model(doc["rows"])
    assert list(models) == [tuple(c) for c in bench_training.SMOKE_CONFIGS]
    assert all(list(programs) == PROGRAMS for programs in models.values())
    meta = doc["meta"]
    assert meta["smoke"] is True and meta["benchmark"] == "training" and meta["repeats"] == 1
    assert meta["configs"] == [list(c) for c in bench_training.SMOKE_CONFIGS]
    assert meta["jax"] == jax.__version__
    assert all(name in table for name in PROGRAMS)
    for row in doc["rows"]:
        assert row["largest_leaf_fraction"] == pytest.approx(1 / row["layers"], rel=0.02)
        assert row["time_ms"] > 0 and row["memory_mb"] > 0


def test_memory_is_arguments_plus_outputs_minus_aliased_plus_temporaries(smoke_run):
    for row in smoke_run[1]["rows"]:
        total = row["argument_mb"] + row["output_mb"] - row["alias_mb"] + row["temp_mb"]
        assert row["memory_mb"] == pytest.approx(total)


def test_mezo_sgd_donates_params_and_needs_less_memory_than_adam(smoke_run):
    for programs in by_model(smoke_run[1]["rows"]).values():
        sgd, adam = programs["mezo_sgd"], programs["adam_first_order"]
        assert sgd["alias_mb"] == pytest.approx(sgd["params_mb"], rel=1e-6)
        assert sgd["memory_mb"] < adam["memory_mb"]
        assert programs["mezo_adam"]["memory_mb"] > sgd["memory_mb"] + 1.9 * sgd["params_mb"]


@pytest.mark.parametrize("program", ["mezo_sgd", "mezo_sgd_rademacher"])
def test_mezo_sgd_needs_the_forward_plus_one_perturbed_leaf(smoke_run, program):
    # Both losses come from the unchanged params, so one perturbed leaf (the largest) must exist
    # next to them; two such leaves, z for the whole model or a copy of the params would not fit.
    for programs in by_model(smoke_run[1]["rows"]).values():
        row, forward = programs[program], programs["forward"]
        largest = row["largest_leaf_fraction"] * row["params_mb"]
        extra = row["memory_mb"] - forward["memory_mb"]
        assert largest <= extra < largest + 0.1 * row["params_mb"], (extra, largest)


def test_in_place_step_needs_no_more_than_the_forward(smoke_run):
    for programs in by_model(smoke_run[1]["rows"]).values():
        row = programs["mezo_sgd_in_place"]
        assert row["alias_mb"] == pytest.approx(row["params_mb"], rel=1e-6)
        assert row["memory_vs_forward"] < 1.05
        assert row["memory_mb"] < programs["mezo_sgd"]["memory_mb"]


def test_weights_pass_is_in_place(smoke_run):
    for programs in by_model(smoke_run[1]["rows"]).values():
        row = programs["weights_pass"]
        assert row["alias_mb"] == pytest.approx(row["params_mb"], rel=1e-6)
        assert row["temp_mb"] < 0.1 * row["params_mb"]


def test_rejects_models_whose_largest_tensor_is_over_a_quarter_of_the_params():
    with pytest.raises(SystemExit):
        bench_training.parse_args(["--layers", "3"])


def test_one_model_when_its_shape_is_given():
    args = bench_training.parse_args(["--layers", "6", "--batch", "32"])
    layers, width, _ = bench_training.DEFAULT_CONFIGS[0]
    assert args.configs == [(6, width, 32)] and layers == 8
    assert bench_training.parse_args([]).configs == list(bench_training.DEFAULT_CONFIGS)


def test_llama_rows_measure_the_finetune_model():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rows = bench_training.main(
            ["--llama", "tiny", "--smoke", "--batch", "4",
             "--programs", "mezo_sgd", "mezo_sgd_in_place", "adam_first_order"]
        )  # fmt: skip
    programs = {r["program"]: r for r in rows}
    assert list(programs) == ["forward", "mezo_sgd", "mezo_sgd_in_place", "adam_first_order"]
    assert all("tiny random Llama" in r["model"] and r["batch"] == 4 for r in rows)
    sgd, in_place = programs["mezo_sgd"], programs["mezo_sgd_in_place"]
    assert sgd["alias_mb"] == pytest.approx(sgd["params_mb"], rel=1e-6)  # donated
    assert sgd["memory_mb"] < programs["adam_first_order"]["memory_mb"]
    assert in_place["memory_vs_forward"] < 1.05 and in_place["memory_mb"] <= sgd["memory_mb"]
