"""Data for zeroth-order fine-tuning on the sentence task: LinFiK / ALinFiK and OAT-Rephrase.

Run through ``bench.finetune``::

    python -m bench.finetune --only sentences linfik selection oat [--tiny] [--json FILE] ...

Task: :mod:`training.tasks.sentences` (review sentences from lexicon words in hand-written
frames, half negating), label-word classification as in ``bench.finetune`` (one forward row per
sentence, the label words scored at the prompt's last position). The training pool is
``--pool`` random training sentences; dev: the first ``--dev-words`` dev sentences (the LinFiK
target and the choice of lr); test: all 557 test sentences (``--test-words`` fewer).

Model: SmolLM2-135M-Instruct dequantized to float32 (``--tiny``: the random 2-layer Llama of
``bench.finetune``). ZO training and LinFiK live in the static 0.1 % gradient mask of
``bench.finetune`` (``mezo-sparse``: a dense vector of the masked entries over the frozen
base); Adam trains all parameters.

Parts (``--only``):

- ``sentences``: zero-shot, sparse MeZO and Adam (``--sentence-methods``) on the whole pool
  (Table S).
- ``linfik``: exact LinFiK (``training.valuation.linfik``, target = the dev batch) on the pool;
  the ground truth ``ΔL_dev`` of one SGD step on each of ``--probe`` samples at step sizes
  ``c / max|v|`` for ``c`` in ``--linfik-scales`` (so the first-order change is at most ``c``);
  Spearman of exact LinFiK and of its forward-only estimate (``--zo-directions`` directions,
  two-point target, and GradIP: exact target gradient) against it (Table L1); ALinFiK: an MLP on
  MiniLM embeddings (ECF8 MiniLM) + the label, trained on a random half of the pool to regress
  exact LinFiK, scored on the other half (Spearman, top-10 % overlap; Table L2); cost against
  model size: measured per-sample time of exact LinFiK (tiny Llama, SmolLM2) and compiled FLOPs
  and memory of the per-chunk program (tiny, SmolLM2-135M, and SmolLM2-1.7B's config, lowered
  from ``jax.ShapeDtypeStruct`` parameters, never allocated; Table L3).
- ``selection``: sparse MeZO and Adam (``--select-methods``) on the top-``k`` by exact LinFiK,
  top-``k`` by ALinFiK (student trained on a random half, applied to the whole pool), the top
  ``k/2`` by exact LinFiK of each label, random-``k`` and bottom-``k`` (Table Sel).
  ``--linfik-cache FILE`` keeps the pool's exact LinFiK values, so that the parts can run in
  separate processes.
- ``oat``: OAT-Rephrase. The rewriter (SmolLM2-Instruct with ECF8 weights) writes ``--oat-k``
  sampled rephrasings of each of ``--oat-instances`` pool sentences (prompt
  :data:`training.rephrase.REWRITER_SYSTEM`); the judge (ECF8 MiniLM cosine ≥
  ``--judge-threshold``, and the ECF8 SmolLM2's zero-shot label unchanged) keeps some; sparse
  MeZO then trains on the original instances, the accepted rephrasings, and both, same steps and
  lr (Table O, with dev loss/accuracy curves and examples).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import training
from bench import finetune_common as finetune
from bench.common import run_metadata, write_json
from training import alinfik, rephrase, valuation
from training.tasks import sentences

PARTS = finetune.DATA_PARTS
DATA_DEFAULTS = dict(
    pool=512,
    probe=32,
    target_size=64,
    zo_directions=64,
    linfik_scales=(1e-3, 1e-1, 1.0, 10.0),
    select_k=64,
    select_steps=100,
    select_adam_steps=8,
    oat_instances=48,
    oat_k=2,
    oat_steps=100,
    oat_eval_every=25,
    rewriter_tokens=40,
    judge_threshold=rephrase.DEFAULT_THRESHOLD,
    student_steps=400,
)
DATA_TINY = dict(
    pool=48,
    probe=8,
    target_size=8,
    zo_directions=8,
    select_k=12,
    select_steps=3,
    select_adam_steps=2,
    oat_instances=4,
    oat_k=2,
    oat_steps=3,
    oat_eval_every=2,
    rewriter_tokens=6,
    judge_threshold=-1.0,
    student_steps=20,
)
LARGE_CONFIG = dict(  # SmolLM2-1.7B's shape (random weights, never allocated)
    vocab_size=49152,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=24,
    num_attention_heads=32,
    num_key_value_heads=32,
    head_dim=64,
    tie_word_embeddings=True,
)


def add_args(p: argparse.ArgumentParser) -> None:
    """This module's options (defaults: :data:`DATA_DEFAULTS`; ``--tiny``: :data:`DATA_TINY`)."""
    g = p.add_argument_group("sentences / linfik / selection / oat")
    g.add_argument("--pool", type=int, help="training sentences in the pool")
    g.add_argument("--probe", type=int, help="linfik: pool samples with a ground-truth SGD step")
    g.add_argument("--target-size", type=int, help="linfik: dev sentences in the target batch")
    g.add_argument("--zo-directions", type=int, help="linfik: directions of the ZO estimate")
    g.add_argument("--linfik-scales", type=float, nargs="+", help="linfik: η·max|v| values")
    g.add_argument("--select-k", type=int, help="selection: training subset size")
    g.add_argument("--select-steps", type=int, help="selection: sparse MeZO steps")
    g.add_argument("--select-adam-steps", type=int, help="selection: Adam steps")
    g.add_argument("--oat-instances", type=int, help="oat: pool sentences rephrased")
    g.add_argument("--oat-k", type=int, help="oat: rephrasings per instance")
    g.add_argument("--oat-steps", type=int, help="oat: sparse MeZO steps per training set")
    g.add_argument("--oat-eval-every", type=int, help="oat: dev loss/accuracy every N steps")
    g.add_argument("--rewriter-tokens", type=int, help="oat: new tokens per rephrasing")
    g.add_argument("--judge-threshold", type=float, help="oat: minimum MiniLM cosine")
    g.add_argument("--student-steps", type=int, help="ALinFiK student: Adam steps")
    g.add_argument("--linfik-mode", default="vjp", choices=["jvp", "vjp"],
                   help="exact LinFiK in forward or reverse mode (jvp ran out of memory on SmolLM2's sparse delta)")  # fmt: skip
    g.add_argument("--oat-cache", default=None, help="oat: JSON file keeping the rephrasings")
    g.add_argument("--linfik-cache", default=None,
                   help="linfik / selection: JSON file keeping the pool's exact LinFiK values")  # fmt: skip
    g.add_argument("--sentence-methods", nargs="+", default=["mezo", "adam"],
                   choices=["mezo", "adam"], help="sentences: the trainers run on the pool")  # fmt: skip
    g.add_argument("--select-methods", nargs="+", default=["mezo", "adam"],
                   choices=["mezo", "adam"], help="selection: the trainers run on each subset")  # fmt: skip


def fill_defaults(args: argparse.Namespace) -> None:
    """Sets this module's unset options from :data:`DATA_DEFAULTS` / :data:`DATA_TINY`."""
    base = dict(DATA_DEFAULTS, **DATA_TINY) if args.tiny else dict(DATA_DEFAULTS)
    for k, v in base.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)


# --------------------------------------------------------------------------- model and data


class Data:
    """The float model, the sentence splits as token arrays, and the text-side models.

    Attributes:
      s: a ``bench.finetune.Setup`` (``data``: ``train`` = the pool, ``dev``, ``test``).
      pool, dev, test: the :class:`~training.tasks.sentences.Sentence` lists.
      encode, decode: the tokenizer.
      gguf: the GGUF path (None with ``--tiny``).
      width: the padded prompt width.
    """

    def __init__(self, args: argparse.Namespace):
        loaded = finetune.load_model(args.model, tiny=args.tiny, seed=args.seeds[0])
        self.tiny, self.gguf = loaded.tiny, loaded.gguf
        self.encode, self.decode = loaded.encode, loaded.decode
        self.config = loaded.model.config
        splits = sentences.load()
        order = np.random.default_rng(0).permutation(len(splits["train"]))[: args.pool]
        self.pool = [splits["train"][i] for i in order]
        dev_order = np.random.default_rng(1).permutation(len(splits["dev"]))
        test_order = np.random.default_rng(2).permutation(len(splits["test"]))
        self.dev = [splits["dev"][i] for i in dev_order[: args.dev_words]]
        self.test = [splits["test"][i] for i in test_order[: args.test_words]]
        # 8 tokens of room: most rephrasings fit the same shape (fewer compilations).
        self.s = finetune.load_setup(
            sentences, {"train": self.pool, "dev": self.dev, "test": self.test}, loaded,
            extra_width=8,
        )  # fmt: skip
        self.width = self.s.data["train"][0].shape[1]

    def arrays(self, items):
        """``(tokens, last, labels)`` of sentences, padded to the common width or, for longer
        prompts (rephrasings), to their own."""
        return finetune.prompt_arrays(sentences, items, self.encode, self.s.label_ids, self.width)


def mean_loss(loss_fn, params, data) -> float:
    """Mean loss over every row of ``data`` (batches of ``EVAL_BATCH``; the last one wraps)."""
    fn = finetune._jitted(loss_fn)
    n, total = len(data[2]), 0.0
    for start in range(0, n, finetune.EVAL_BATCH):
        rows = np.arange(start, min(start + finetune.EVAL_BATCH, n))
        idx = np.arange(start, start + finetune.EVAL_BATCH) % n
        full = float(fn(params, finetune.take(data, idx)))  # mean over the padded batch
        if len(rows) == finetune.EVAL_BATCH:
            total += full * len(rows)
        else:  # the wrapped batch: score the real rows alone
            total += float(fn(params, finetune.take(data, rows))) * len(rows)
    return total / n


def subset(data, idx):
    """Rows ``idx`` of a ``(tokens, last, labels)`` triple (numpy)."""
    return tuple(np.asarray(x)[np.asarray(idx)] for x in data)


def concat(*parts):
    """Rows of several triples, one after another (tokens padded to the widest)."""
    width = max(p[0].shape[1] for p in parts)
    tokens = np.concatenate([np.pad(p[0], ((0, 0), (0, width - p[0].shape[1]))) for p in parts])
    return (tokens, *(np.concatenate([p[i] for p in parts]) for i in (1, 2)))


def balanced_top_k(values: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` highest-valued samples, an equal share from each label (the first labels take
    the remainder): raw top-``k`` by LinFiK can come from one label alone."""
    classes = np.unique(labels)
    out = []
    for i, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        take = k // len(classes) + (i < k % len(classes))
        out.append(members[valuation.top_k(values[members], min(take, len(members)))])
    return np.concatenate(out)


# --------------------------------------------------------------------------- text models


class TextModels:
    """The judge's and the student's sentence embeddings (ECF8 MiniLM; ``--tiny``: hashed
    bags of words) and the ECF8 SmolLM2 rewriter / zero-shot labeller (loaded on first use)."""

    def __init__(self, d: Data):
        self.d = d
        self._bert = self._llm = None

    def embed(self, texts: list[str]) -> np.ndarray:
        """float32 ``[N, D]`` unit-norm sentence embeddings."""
        if self.d.tiny:
            out = np.zeros((len(texts), 64), np.float32)
            for i, t in enumerate(texts):
                for w in re.findall(r"[a-z0-9']+", t.lower()):
                    out[i, int(hashlib.sha256(w.encode()).hexdigest(), 16) % 64] += 1
            return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
        from ecf8_jax.io import minilm

        if self._bert is None:
            from ecf8_jax.nn import compress_model

            self._bert = compress_model(minilm.load_minilm())
            self._bert_graph, self._bert_state = nnx.split(self._bert)

            @jax.jit
            def run(state, ids, mask):
                return nnx.merge(self._bert_graph, state).embed(ids, mask)

            self._bert_fn = run
        out = []
        for start in range(0, len(texts), 64):
            ids, mask = minilm.tokenize(texts[start : start + 64])
            width = 16 * -(-ids.shape[1] // 16)  # few distinct shapes: few compilations
            ids = np.pad(ids, ((0, 0), (0, width - ids.shape[1])))
            mask = np.pad(mask, ((0, 0), (0, width - mask.shape[1])))
            out.append(np.asarray(self._bert_fn(self._bert_state, ids, mask)))
        return np.concatenate(out).astype(np.float32)

    def llm(self):
        """The ECF8 rewriter (SmolLM2 FP8 from the GGUF, compressed; ``--tiny``: a random FP8
        tiny Llama, compressed)."""
        if self._llm is None:
            from ecf8_jax.nn import compress_model

            if self.d.tiny:
                from ecf8_jax.models.llama import LlamaForCausalLM

                float_model, _, _ = finetune.tiny_model(0)
                model = LlamaForCausalLM(float_model.config, nnx.Rngs(0), fp8=True)
            else:
                from ecf8_jax.io import gguf as gguf_io

                model = gguf_io.load_gguf_llama(self.d.gguf)
            self._llm = compress_model(model)
        return self._llm

    def zero_shot(self, texts: list[str]) -> np.ndarray:
        """The ECF8 model's zero-shot labels (argmax over the label words), int ``[N]``."""
        model = self.llm()
        graphdef, state = nnx.split(model)
        ids = self.d.s.label_ids
        fn = jax.jit(
            lambda st, tokens, last: finetune.last_logits(nnx.merge(graphdef, st), tokens, last)
        )
        items = [sentences.Sentence(t, 0) for t in texts]
        tokens, last, _ = self.d.arrays(items)
        out = []
        for start in range(0, len(texts), finetune.EVAL_BATCH):
            idx = np.arange(start, start + finetune.EVAL_BATCH) % len(texts)
            logits = fn(state, jnp.asarray(tokens[idx]), jnp.asarray(last[idx]))
            out.append(np.asarray(logits)[:, list(ids)].argmax(-1)[: len(texts) - start])
        return np.concatenate(out)

    def rephrase(self, texts: list[str], k: int, max_new: int, seed: int) -> list[list[str]]:
        """``k`` sampled rephrasings of each text (batched, left-padded generation)."""
        from ecf8_jax.models import generate

        model = self.llm()
        prompts = [
            rephrase.chat_prompt(rephrase.REWRITER_SYSTEM, rephrase.rewriter_user_prompt(t))
            for t in texts
        ]
        rows = [self.d.encode(p) for p in prompts for _ in range(k)]
        width = max(len(r) for r in rows)
        tokens = np.zeros((len(rows), width), np.int32)
        mask = np.zeros((len(rows), width), np.int32)
        for i, r in enumerate(rows):
            tokens[i, width - len(r) :] = r
            mask[i, width - len(r) :] = 1
        out = np.asarray(
            generate(
                model,
                tokens,
                max_new,
                attention_mask=mask,
                key=jax.random.key(seed),
                temperature=0.8,
                top_p=0.9,
            )
        )[:, width:]
        eos = model.config.eos_token_id
        eos = set(eos) if isinstance(eos, list | tuple) else {eos}
        replies = []
        for row in out:
            cut = [int(t) for t in row]
            for j, t in enumerate(cut):
                if t in eos:
                    cut = cut[:j]
                    break
            replies.append(rephrase.parse_rephrasing(self.d.decode(cut)))
        return [replies[i * k : (i + 1) * k] for i in range(len(texts))]


# --------------------------------------------------------------------------- cost model


def linfik_program_cost(config_kwargs: dict, chunk: int, seq: int) -> dict[str, Any]:
    """Compiled FLOPs and memory of one exact-LinFiK chunk (jvp of ``chunk`` per-sample losses)
    on a random Llama of this shape: parameters as ``ShapeDtypeStruct``, never allocated."""
    from ecf8_jax.models.llama import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**config_kwargs)
    abstract = nnx.eval_shape(lambda: LlamaForCausalLM(config, nnx.Rngs(0), fp8=False))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    n_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))

    def chunk_values(p, r, g, c):
        def loss_fn(q, arrays):
            tokens, last, labels = arrays
            logits = finetune.last_logits(nnx.merge(graphdef, q, r), tokens, last)
            logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)[:, :2]
            return -jnp.take_along_axis(logp, labels[:, None], 1).mean()

        return jax.jvp(lambda q: valuation.per_sample_losses(loss_fn, q, c), (p,), (g,))[1]

    def spec(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype)

    p_spec = jax.tree.map(spec, params)
    r_spec = jax.tree.map(spec, rest)
    c_spec = (
        jax.ShapeDtypeStruct((chunk, seq), jnp.int32),
        jax.ShapeDtypeStruct((chunk,), jnp.int32),
        jax.ShapeDtypeStruct((chunk,), jnp.int32),
    )
    start = time.perf_counter()
    compiled = jax.jit(chunk_values).lower(p_spec, r_spec, p_spec, c_spec).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    mem = compiled.memory_analysis()
    return dict(
        params=n_params,
        flops_per_sample=float(cost.get("flops", float("nan"))) / chunk,
        temp_bytes=int(getattr(mem, "temp_size_in_bytes", 0)),
        arg_bytes=int(getattr(mem, "argument_size_in_bytes", 0)),
        compile_s=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------- the parts


def run(args: argparse.Namespace, wanted: set[str]) -> dict[str, list[dict]]:
    """Runs the ``wanted`` parts of :data:`PARTS`; returns their tables (lists of rows)."""
    fill_defaults(args)
    d = Data(args)
    s = d.s
    loss_fn, correct_fn = finetune.task_fns(s)
    pool, dev, test = s.data["train"], s.data["dev"], s.data["test"]
    total = int(sum(x.size for x in jax.tree.leaves(s.params)))
    tables: dict[str, list[dict]] = {
        k: [] for k in ("sentences", "linfik", "student", "cost", "selection", "oat", "examples")
    }
    meta = run_metadata(
        benchmark="finetune-data",
        model_name=s.name,
        **{k: v for k, v in vars(args).items() if k not in ("json", "markdown")},
    )
    print(
        f"{s.name}: {total:,} float parameters; sentences pool {len(d.pool)}, dev {len(d.dev)}, "
        f"test {len(d.test)}",
        flush=True,
    )
    print(sentences.summary({"pool": d.pool, "dev": d.dev, "test": d.test}), flush=True)

    def emit(table, row):
        tables[table].append(row)
        print(table, {k: v for k, v in row.items() if k not in ("loss_curve", "curve")}, flush=True)
        if args.json:
            rows = [dict(r, table=n) for n, t in tables.items() for r in t]
            write_json(args.json, rows, meta=meta)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(render(tables, args) + "\n")

    # The sparse subspace (bench.finetune's mezo-sparse): a mask from a label-free LM loss.
    # Every part but Adam alone on the sentences needs it.
    if wanted - {"sentences"} or "mezo" in args.sentence_methods:
        start = time.perf_counter()
        rng = np.random.default_rng(1234)
        calib = [
            finetune.take(pool, rng.choice(len(pool[2]), args.batch, replace=False))
            for _ in range(args.calib_batches)
        ]
        mask = training.gradient_mask(finetune.lm_loss_fn(s), s.params, calib, args.density)
        sparse = training.MaskedEntries.from_mask(mask)
        del mask
        base, values0 = s.params, sparse.values(s.params)
        print(f"mask: {sparse.count:,} entries in {time.perf_counter() - start:.0f} s", flush=True)
        sparse_loss = sparse.loss(loss_fn, base)
    z = training.Perturbation(args.distribution)  # of every ZO estimate here

    lr_mezo, lr_adam = args.lr_sparse[0], args.lr_adam[0]
    zero_shot_test = finetune.accuracy(correct_fn, s.params, test)

    def train_mezo(data, steps, seed, curve=None):
        def probe(t, v):
            p = sparse.merge(base, v)
            curve.append(
                dict(
                    step=t,
                    dev_loss=mean_loss(loss_fn, p, dev),
                    dev_acc=finetune.accuracy(correct_fn, p, dev),
                )
            )

        values, wall, losses = finetune.run_mezo(
            sparse_loss,
            values0,
            data,
            steps=steps,
            batch=min(args.batch, len(data[2])),
            lr=lr_mezo,
            eps=args.eps,
            seed=seed,
            prng=args.prng,
            distribution=args.distribution,
            every=args.oat_eval_every if curve is not None else 0,
            probe=probe if curve is not None else None,
        )
        return sparse.merge(base, values), wall, losses

    def train_adam(data, steps, seed):
        return finetune.run_adam(
            loss_fn,
            s.params,
            data,
            steps=steps,
            batch=min(args.batch, len(data[2])),
            lr=lr_adam,
            seed=seed,
        )

    def quality(method, data_name, params, wall, losses, steps, lr, **extra):
        return dict(
            method=method,
            data=data_name,
            steps=steps,
            lr=lr,
            wall_s=wall,
            loss_path=finetune.loss_path(losses),
            dev_acc=finetune.accuracy(correct_fn, params, dev),
            test_acc=finetune.accuracy(correct_fn, params, test),
            **extra,
        )

    seed = args.seeds[0]
    zero_shot = dict(
        method="zero-shot",
        data="-",
        steps=0,
        dev_acc=finetune.accuracy(correct_fn, s.params, dev),
        test_acc=zero_shot_test,
    )
    for part in ("sentences", "selection", "oat"):  # every quality table starts from zero-shot
        if part in wanted:
            emit(part, dict(zero_shot))
    if "sentences" in wanted and "mezo" in args.sentence_methods:
        p, wall, losses = train_mezo(pool, args.steps, seed)
        emit(
            "sentences",
            quality(
                f"MeZO sparse {100 * args.density:g} %",
                "pool",
                p,
                wall,
                losses,
                args.steps,
                lr_mezo,
            ),
        )
    if "sentences" in wanted and "adam" in args.sentence_methods:
        p, wall, losses = train_adam(pool, args.adam_steps, seed)
        emit(
            "sentences",
            quality("Adam (first order)", "pool", p, wall, losses, args.adam_steps, lr_adam),
        )

    values = None
    if wanted & {"linfik", "selection"}:
        target = finetune.take(dev, np.arange(min(args.target_size, len(dev[2]))))
        start = time.perf_counter()
        tgrad = valuation.target_gradient(sparse_loss, values0, target)
        cache = Path(args.linfik_cache) if args.linfik_cache else None
        key = [args.model, args.tiny, seed, [x.text for x in d.pool], [x.text for x in d.dev],
               args.target_size, args.density, args.calib_batches, args.batch, args.linfik_mode]  # fmt: skip
        saved = json.loads(cache.read_text()) if cache is not None and cache.exists() else None
        if saved is not None and saved["key"] == key:
            values, exact_s = np.asarray(saved["values"], np.float64), saved["exact_s"]
            print(f"exact LinFiK of {len(values)} samples from {cache}", flush=True)
        else:
            values = valuation.linfik(
                sparse_loss, values0, pool, target, chunk=8, target_grad=tgrad,
                mode=args.linfik_mode,
            )  # fmt: skip
            exact_s = time.perf_counter() - start
            if cache is not None:
                text = json.dumps(dict(key=key, values=values.tolist(), exact_s=exact_s))
                cache.write_text(text)
        print(f"exact LinFiK on {len(values)} samples: {exact_s:.0f} s", flush=True)
        features = np.concatenate(
            [TextModels(d).embed([x.text for x in d.pool]), np.eye(2)[pool[2]].astype(np.float32)],
            axis=1,
        )

    if "linfik" in wanted:
        probe = subset(pool, np.arange(args.probe))
        v = values[: args.probe]
        scale = 1.0 / np.abs(v).max()
        lrs = [c * scale for c in args.linfik_scales]
        start = time.perf_counter()
        deltas = valuation.sgd_delta(sparse_loss, values0, probe, target, lrs)
        truth_s = time.perf_counter() - start
        start = time.perf_counter()
        zo = valuation.linfik_zo(
            sparse_loss,
            values0,
            probe,
            target,
            key=jax.random.key(seed + 7),
            num_samples=args.zo_directions,
            eps=args.eps,
            chunk=8,
            perturbation=z,
        )
        zo_s = time.perf_counter() - start
        keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.key(seed + 7), k))(
            jnp.arange(args.zo_directions)
        )
        gradip_t = np.asarray(
            jax.jit(jax.vmap(lambda k: training.zo_directional(tgrad, k, perturbation=z)))(keys)
        )
        estimates = {f"exact ({args.linfik_mode})": (v, None)}
        ks = sorted({max(1, args.zo_directions // 4), args.zo_directions})
        for k in ks:
            estimates[f"ZO two-point, K={k}"] = ((zo.pool[:, :k] * zo.target[:k]).mean(1), k)
            estimates[f"ZO GradIP, K={k}"] = ((zo.pool[:, :k] * gradip_t[:k]).mean(1), k)
        for name, (est, k) in estimates.items():
            row = dict(
                estimator=name,
                samples=args.probe,
                spearman_exact=valuation.spearman(est, v),
                time_s=(exact_s * args.probe / len(values))
                if k is None
                else zo_s * k / args.zo_directions,
            )
            for c, col in zip(args.linfik_scales, deltas.T, strict=True):
                row[f"rho_{c:g}"] = valuation.spearman(-est, col)
            emit("linfik", row)
        lin_err = [
            float(np.abs(col + lr * v).max() / np.abs(col).max())
            for lr, col in zip(lrs, deltas.T, strict=True)
        ]
        print(f"ground truth {truth_s:.0f} s; |ΔL + ηv|/max|ΔL| per scale: {lin_err}", flush=True)
        # ALinFiK: student on a random half, scored on the other half.
        half = np.random.default_rng(3).permutation(len(values))
        tr, ho = half[: len(values) // 2], half[len(values) // 2 :]
        k10 = max(1, len(ho) // 10)
        for target_kind in ("value", "rank"):
            start = time.perf_counter()
            student = alinfik.train_student(
                features[tr], values[tr], steps=args.student_steps, target=target_kind, seed=seed
            )
            pred = alinfik.predict(student, features[ho])
            emit(
                "student",
                dict(
                    student=f"MiniLM+label → MLP(256), target {target_kind}",
                    train=len(tr),
                    held_out=len(ho),
                    spearman=valuation.spearman(pred, values[ho]),
                    top10_overlap=valuation.top_k_overlap(pred, values[ho], k10),
                    random_top10=k10 / len(ho),
                    train_s=time.perf_counter() - start,
                ),
            )
        label_only = np.where(
            pool[2][ho] == 1,
            values[tr][pool[2][tr] == 1].mean(),
            values[tr][pool[2][tr] == 0].mean(),
        )
        emit(
            "student",
            dict(
                student="label only (mean value per label)",
                train=len(tr),
                held_out=len(ho),
                spearman=valuation.spearman(label_only + 1e-9 * np.arange(len(ho)), values[ho]),
                top10_overlap=valuation.top_k_overlap(label_only, values[ho], k10),
                random_top10=k10 / len(ho),
            ),
        )
        # Cost against model size.
        seq = pool[0].shape[1]
        configs = [("tiny Llama (2 x 64)", dataclasses.asdict(finetune.tiny_model(0)[0].config))]
        if not args.tiny:
            configs.append(("SmolLM2-135M", dataclasses.asdict(d.config)))
            configs.append(("SmolLM2-1.7B shape", LARGE_CONFIG))
        for name, cfg in configs:
            row = dict(model=name, **linfik_program_cost(cfg, 8, seq))
            if name == ("tiny Llama (2 x 64)" if args.tiny else "SmolLM2-135M"):
                row["measured_s_per_sample"] = exact_s / len(values)
            emit("cost", row)

    if "selection" in wanted:
        half = np.random.default_rng(3).permutation(len(values))[: len(values) // 2]
        student = alinfik.train_student(
            features[half], values[half], steps=args.student_steps, target="rank", seed=seed
        )
        predicted = alinfik.predict(student, features)
        k = args.select_k
        subsets = {
            f"top-{k} LinFiK": valuation.top_k(values, k),
            f"top-{k} ALinFiK": valuation.top_k(predicted, k),
            f"top-{k} LinFiK per label": balanced_top_k(values, pool[2], k),
            f"random-{k}": np.random.default_rng(seed + 11).permutation(len(values))[:k],
            f"bottom-{k} LinFiK": valuation.top_k(-values, k),
        }
        for name, idx in subsets.items():
            data = subset(pool, idx)
            extra = dict(
                positive_share=float(np.mean(data[2])), mean_value=float(values[idx].mean())
            )
            if "mezo" in args.select_methods:
                p, wall, losses = train_mezo(data, args.select_steps, seed)
                emit(
                    "selection",
                    quality(
                        f"MeZO sparse {100 * args.density:g} %",
                        name,
                        p,
                        wall,
                        losses,
                        args.select_steps,
                        lr_mezo,
                        **extra,
                    ),
                )
            if "adam" in args.select_methods:
                p, wall, losses = train_adam(data, args.select_adam_steps, seed)
                emit(
                    "selection",
                    quality(
                        "Adam (first order)",
                        name,
                        p,
                        wall,
                        losses,
                        args.select_adam_steps,
                        lr_adam,
                        **extra,
                    ),
                )

    if "oat" in wanted:
        tm = TextModels(d)
        items = d.pool[: args.oat_instances]
        start = time.perf_counter()
        cache = Path(args.oat_cache) if args.oat_cache else None
        key = [args.model, [x.text for x in items], args.oat_k, args.rewriter_tokens, seed]
        if cache is not None and cache.exists() and json.loads(cache.read_text())["key"] == key:
            saved = json.loads(cache.read_text())
            candidates, gen_s = saved["candidates"], saved["generate_s"]
        else:
            candidates = tm.rephrase(
                [x.text for x in items], args.oat_k, args.rewriter_tokens, seed
            )
            gen_s = time.perf_counter() - start
            if cache is not None:
                cache.write_text(
                    json.dumps(dict(key=key, candidates=candidates, generate_s=gen_s), indent=1)
                )
        flat = [c for cs in candidates for c in cs]
        originals = [x.text for x in items]
        emb_o, emb_c = tm.embed(originals), tm.embed([c or "-" for c in flat])
        zs_o = tm.zero_shot(originals)
        zs_c = tm.zero_shot([c or "-" for c in flat])
        accepted, reasons = [], {}
        for i, x in enumerate(items):
            for j, c in enumerate(candidates[i]):
                m = i * args.oat_k + j
                cos = float(rephrase.cosine(emb_o[i], emb_c[m]))
                verdict = rephrase.judge(
                    x.text, c, cos, zs_o[i], zs_c[m], threshold=args.judge_threshold
                )
                reasons[verdict.reason] = reasons.get(verdict.reason, 0) + 1
                if verdict.accept:
                    accepted.append(sentences.Sentence(c, x.label, x.word, x.negated))
                if len(tables["examples"]) < 12 or (
                    verdict.accept and sum(e["accepted"] for e in tables["examples"]) < 6
                ):
                    tables["examples"].append(
                        dict(
                            original=x.text,
                            label=sentences.LABELS[x.label],
                            rephrasing=_cell(c),
                            cosine=cos,
                            zero_shot=f"{sentences.LABELS[zs_o[i]]} → {sentences.LABELS[zs_c[m]]}",
                            accepted=verdict.accept,
                            reason=verdict.reason,
                        )
                    )
        fits = [(a, d.arrays([a])) for a in accepted]
        rate = len(fits) / max(1, len(flat))
        print(
            f"OAT: {len(flat)} rephrasings in {gen_s:.0f} s; kept {len(fits)} ({rate:.2f}); {reasons}",
            flush=True,
        )
        original = subset(pool, np.arange(len(items)))
        sets = {"original": original}
        if fits:
            rephrased = concat(*[f[1] for f in fits])
            sets["rephrased"] = rephrased
            sets["original + rephrased"] = concat(original, rephrased)
        for name, data in sets.items():
            curve = []
            p, wall, losses = train_mezo(data, args.oat_steps, seed, curve)
            emit(
                "oat",
                quality(
                    f"MeZO sparse {100 * args.density:g} %",
                    name,
                    p,
                    wall,
                    losses,
                    args.oat_steps,
                    lr_mezo,
                    size=len(data[2]),
                    generated=len(flat),
                    accepted=len(fits),
                    accept_rate=rate,
                    reasons=dict(reasons),
                    generate_s=gen_s,
                    curve=curve,
                    loss_curve=losses,
                ),
            )
        for e in tables["examples"]:
            print("  example", e, flush=True)
        if args.json:
            write_json(
                args.json, [dict(r, table=n) for n, t in tables.items() for r in t], meta=meta
            )
    if not args.markdown:
        print(render(tables, args))
    else:
        with open(args.markdown, "w") as f:
            f.write(render(tables, args) + "\n")
    return tables


# --------------------------------------------------------------------------- tables

QUALITY = [
    ("method", "method", ""),
    ("data", "training data", ""),
    ("steps", "steps", ""),
    ("lr", "lr", ".0e"),
    ("wall_s", "train wall s", ".0f"),
    ("loss_path", "train loss, first → last 10 steps (halves under 20)", ""),
    ("dev_acc", "dev acc", ".3f"),
    ("test_acc", "test acc", ".3f"),
]
STUDENT = [
    ("student", "student", ""),
    ("train", "trained on", ""),
    ("held_out", "held out", ""),
    ("spearman", "Spearman vs exact", ".3f"),
    ("top10_overlap", "top-10 % overlap", ".3f"),
    ("random_top10", "chance overlap", ".3f"),
]
COST = [
    ("model", "model", ""),
    ("params", "params", ","),
    ("flops_per_sample", "exact LinFiK FLOPs / sample", ".3g"),
    ("temp_bytes", "temp bytes (chunk of 8)", ",.0f"),
    ("arg_bytes", "argument bytes", ",.0f"),
    ("measured_s_per_sample", "measured s / sample", ".3f"),
]


def _cell(text: str) -> str:
    """``text`` safe inside a markdown table cell."""
    return text.replace("|", "/").replace("\n", " ")


def render(tables: dict[str, list[dict]], args: argparse.Namespace) -> str:
    """The markdown tables."""
    out = [
        f"Sentence task; sparse MeZO lr {args.lr_sparse[0]:g}, eps {args.eps:g}, batch {args.batch}, "
        f"z {args.distribution}; Adam lr {args.lr_adam[0]:g}; pool {args.pool}, dev {args.dev_words}, "
        f"test {args.test_words or 'all'}."
    ]
    if tables["sentences"]:
        out += ["", finetune.markdown_table(tables["sentences"], QUALITY)]
    if tables["linfik"]:
        scales = list(args.linfik_scales)
        cols = [("estimator", "estimator", ""), ("samples", "probe samples", ""),
                ("spearman_exact", "ρ vs exact", ".3f")]  # fmt: skip
        cols += [(f"rho_{c:g}", f"ρ vs ΔL at η·v_max={c:g}", ".3f") for c in scales]
        cols += [("time_s", "time s", ".1f")]
        out += ["", finetune.markdown_table(tables["linfik"], cols)]
    if tables["student"]:
        out += ["", finetune.markdown_table(tables["student"], STUDENT)]
    if tables["cost"]:
        out += ["", finetune.markdown_table(tables["cost"], COST)]
    if tables["selection"]:
        cols = QUALITY[:2] + [("positive_share", "positive share", ".2f"),
                              ("mean_value", "mean LinFiK", ".3g")] + QUALITY[2:]  # fmt: skip
        out += ["", finetune.markdown_table(tables["selection"], cols)]
    if tables["oat"]:
        cols = QUALITY[:2] + [("size", "examples", "")] + QUALITY[2:]
        out += ["", finetune.markdown_table(tables["oat"], cols)]
        for r in [r for r in tables["oat"] if "generated" in r][:1]:
            out += ["", f"Rephrasings: {r['generated']} generated, {r['accepted']} accepted "
                    f"(rate {r['accept_rate']:.2f}); reasons {r['reasons']}."]  # fmt: skip
        curve_rows = [dict(data=t["data"], **c) for t in tables["oat"] for c in t.get("curve", ())]
        if curve_rows:
            out += ["", finetune.markdown_table(curve_rows, [
                ("data", "training data", ""), ("step", "step", ""),
                ("dev_loss", "dev loss", ".4f"), ("dev_acc", "dev acc", ".3f")])]  # fmt: skip
    if tables["examples"]:
        out += ["", finetune.markdown_table(tables["examples"], [
            ("original", "original", ""), ("label", "label", ""), ("rephrasing", "rephrasing", ""),
            ("cosine", "cos", ".2f"), ("zero_shot", "zero-shot", ""), ("reason", "verdict", "")])]  # fmt: skip
    return "\n".join(out)
