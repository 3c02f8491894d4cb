"""The byte-level BPE tokenizer stored in a GGUF file's metadata, as a ``tokenizers.Tokenizer``.

llama.cpp's ``gpt2`` tokenizer model (SmolLM2, Llama-3, Qwen) keeps the vocabulary in
``tokenizer.ggml.tokens`` (byte-level strings, ``Ġ`` for a space) and the merges in
``tokenizer.ggml.merges`` (``"a b"``). Rebuilding the Hugging Face tokenizer from them needs no
network and no ``tokenizer.json``.
"""

from __future__ import annotations

import os

from ecf8_jax.io.gguf import metadata_field


def gguf_tokenizer(path: str | os.PathLike):
    """A ``tokenizers.Tokenizer`` equivalent to the GGUF file's byte-level BPE tokenizer.

    Raises:
      ImportError: ``gguf`` or ``tokenizers`` is not installed.
      ValueError: the file holds another tokenizer model (e.g. SentencePiece ``llama``).
    """
    import gguf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    reader = gguf.GGUFReader(path)
    kind = metadata_field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"{path}: tokenizer model {kind!r} is not byte-level BPE ('gpt2')")
    tokens = list(metadata_field(reader, "tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in metadata_field(reader, "tokenizer.ggml.merges")]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer
