"""Check that a venv matches its lock file; warn about packages the lock does not pin.

Usage: python constraints/check_env.py constraints/py312.txt
Exit status 1 if a pinned package is installed at another version.
"""

import importlib.metadata as md
import re
import sys
from pathlib import Path

IGNORED = {"pip", "setuptools", "wheel", "ecf8-jax"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> int:
    lock_path = sys.argv[1]
    pins = {}
    for line in Path(lock_path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_norm(name)] = version.strip()
    wrong, unpinned = [], []
    for dist in md.distributions():
        name = _norm(dist.metadata["Name"])
        if name in IGNORED:
            continue
        if name not in pins:
            unpinned.append(f"{name}=={dist.version}")
        elif pins[name] != dist.version:
            wrong.append(f"{name}: installed {dist.version}, {lock_path} pins {pins[name]}")
    for msg in sorted(unpinned):
        print(f"WARNING: {msg} is installed but not pinned in {lock_path}; update the lock")
    for msg in sorted(wrong):
        print(f"ERROR: {msg}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
