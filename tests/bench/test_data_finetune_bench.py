"""Tests of the sentence-task parts of bench.finetune (bench/data_finetune.py), without models."""

from __future__ import annotations

import pytest

from bench import data_finetune, finetune


def test_sentence_parts_parse_with_their_own_defaults_and_refuse_mixing():
    args = finetune.parse_args(["--tiny", "--only", "linfik", "oat"])
    data_finetune.fill_defaults(args)
    assert args.pool == data_finetune.DATA_TINY["pool"]
    assert args.linfik_scales == data_finetune.DATA_DEFAULTS["linfik_scales"]
    with pytest.raises(SystemExit):
        finetune.parse_args(["--only", "linfik", "mezo-full"])


def test_render_keeps_markdown_tables_intact():
    args = finetune.parse_args(["--only", "oat"])
    data_finetune.fill_defaults(args)
    tables = {k: [] for k in ("sentences", "linfik", "student", "cost", "selection", "oat")}
    tables["linfik"] = [dict(estimator="exact (jvp)", samples=4, spearman_exact=1.0, time_s=1.0,
                             **{f"rho_{c:g}": 0.5 for c in args.linfik_scales})]  # fmt: skip
    tables["examples"] = [dict(original="a", label="positive", rephrasing=data_finetune._cell("x | y"),
                               cosine=0.9, zero_shot="positive → positive", reason="ok")]  # fmt: skip
    md = data_finetune.render(tables, args)
    for block in md.split("\n\n")[1:]:
        lines = block.splitlines()
        widths = {line.count("|") for line in lines}
        assert len(widths) == 1, block  # every row of a table has the header's cell count
