"""How errors are reported: one line per failure (the CLI's and the checkpoint reader's).

No jax import here: the CLI reports errors before (or without) loading jax.
"""

from __future__ import annotations


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception as one line for an error message.

    Args:
      e: the exception.
      limit: characters kept; longer texts end in ``" ..."``.

    Returns:
      ``"file: reason"`` for an ``OSError`` that names a file, else the exception's text with
      whitespace collapsed (its type name when the text is empty).
    """
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = " ".join(str(e).split()) or type(e).__name__
    return (text[:limit] + " ...") if len(text) > limit else text
