"""`vmlab render` of specs mutated from examples/ and tests/data/specs/ (the issue-17 corpus, made
again): strings fed argv/XML/shell metacharacters and control characters, keys dropped, types
and numbers changed, unknown keys, mangled bytes, alias bombs, deep nesting, a FIFO. Counts
exit codes and tracebacks, and prints the slowest render as a ratio of the clean renders of the
same run (seconds depend on the host).

    .venv/bin/python benchmarks/fuzz_render.py [--specs 1000] [--seed 17]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import random
import statistics
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from vmlab.cli import main

ROOT = Path(__file__).parent.parent
FILES = sorted([*(ROOT / "examples").glob("*.yaml"), *(ROOT / "tests/data/specs").glob("*.yaml")])
FRAGMENTS = [",", '"', "'", "<", "&", "$(id)", ";", "\t", "\n", "..", " ", "é", "\x00", "\u2028"]
WRONG: list[Any] = [None, True, -1, 0, 10**16, 2**63, 1.5, "x", [], {}, [1, 2], {"x": 1}]
BOMB = "\n".join(
    ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    + ["name: x", "guest: {cpus: *a8}"]
)


def leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path] if path else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += leaves(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += leaves(value, (*path, index))
    return out


def mutate(rng: random.Random, text: str) -> bytes:
    kind = rng.choice(["string", "string", "drop", "wrong", "unknown", "bytes", "special"])
    if kind == "bytes":
        data = bytearray(text.encode())
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if kind == "special":
        return rng.choice(
            [
                BOMB.encode(),
                b"a: " + b"[" * 3000,
                text.encode("utf-16"),
                text.encode("utf-8").replace(b"a", b"\xe4", 1),
                text.encode() + b"\nname: again\n",
            ]
        )
    raw = yaml.safe_load(text)
    path = rng.choice(leaves(raw))
    parent = raw
    for part in path[:-1]:
        parent = parent[part]
    if kind == "string":
        old = parent[path[-1]]
        nasty = "".join(rng.choices(FRAGMENTS, k=rng.randint(1, 3)))
        parent[path[-1]] = (old + nasty) if isinstance(old, str) else nasty
    elif kind == "drop":
        del parent[path[-1]]
    elif kind == "wrong":
        parent[path[-1]] = copy.deepcopy(rng.choice(WRONG))
    elif isinstance(parent, dict):
        parent[rng.choice(["extra", "Name", "cpus "])] = 1
    return yaml.safe_dump(raw, allow_unicode=True).encode()


def render(path: Path) -> tuple[str, float]:
    """Exit code (or 'traceback'), seconds."""
    started = time.perf_counter()
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            main(["render", str(path)])
        code = "0"
    except SystemExit as exc:
        code = str(exc.code if exc.code is not None else 0)
    except Exception:  # noqa: BLE001 - what this counts
        code = "traceback"
        print(traceback.format_exc(limit=3))
    return code, time.perf_counter() - started


def main_() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--specs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    texts = [p.read_text() for p in FILES]
    with tempfile.TemporaryDirectory() as tmp:
        clean = []
        for index, text in enumerate(texts):
            path = Path(tmp) / f"clean-{index}.yaml"
            path.write_text(text)
            code, seconds = render(path)
            assert code == "0", (FILES[index], code)
            clean.append(seconds)
        codes: Counter[str] = Counter()
        times = []
        for index in range(args.specs):
            path = Path(tmp) / f"m{index}.yaml"
            path.write_bytes(mutate(rng, rng.choice(texts)))
            code, seconds = render(path)
            codes[code] += 1
            times.append(seconds)
        fifo = Path(tmp) / "fifo.yaml"
        os.mkfifo(fifo)
        code, seconds = render(fifo)
        codes[f"fifo:{code}"] += 1
        times.append(seconds)
    base = statistics.median(clean)
    print(f"{args.specs + 1} mutated specs: exit codes {dict(sorted(codes.items()))}")
    print(
        f"render time vs the median clean render ({base * 1000:.0f} ms): "
        f"median x{statistics.median(times) / base:.2f}, slowest x{max(times) / base:.1f} "
        f"({max(times):.2f} s), over 2 s: {sum(t > 2 for t in times)}"
    )


if __name__ == "__main__":
    main_()
