"""The ``ecf8`` command line: an application on top of the ``ecf8_jax`` library and ``training``.

Nothing in ``ecf8_jax`` imports this package. Modules:

* :mod:`ecf8_cli.cli`: the argument parser and ``main`` (the ``ecf8`` console script).
* :mod:`ecf8_cli.common`: what every command shares (errors, tables, progress, plots, outputs).
* :mod:`ecf8_cli.files`: compress / decompress / verify / inspect / stats / minilm, over
  :mod:`ecf8_jax.io.container`.
* :mod:`ecf8_cli.llm`: generate and demo (a Llama-family model running from ECF8 weights).
* :mod:`ecf8_cli.finetune`: MeZO fine-tuning with ``training`` over a frozen ECF8 base.
"""
