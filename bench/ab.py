"""A/B: one bench on a base commit and on the working tree, alternated in one run.

    python bench/ab.py BASE [--rounds 2] [--head COMMIT] [-- BENCH [bench args]]
    python bench/ab.py b58a545 -- bench/calls.py --only a,b,c,d --concurrency 64

BASE is any commit git knows (and so is ``--head``, measured instead of the working tree,
which may then change while the bench runs). Its tree is checked out once as a git
worktree with a venv of its own (``$ACTOR_AB_CACHE``, default
``~/.cache/actorbus-ab/<commit>``, reused on the next run), so only the first run for a
commit pays for the install. The bench
(``bench/calls.py`` unless given) is each tree's own copy run by that tree's venv: the
load generator is the library's own client, so it is measured too. The runs alternate
BASE, HEAD, HEAD, BASE, ... (each tree runs ``--rounds`` times, at least 2), so a drift
in the machine's load falls on both sides.

Each tree's table is the median, over its rounds, of every figure the bench printed;
a line of figures is matched between trees by its leading words and its place among
lines with the same words, and ``x/y = r`` figures by name. Last comes the ratio
HEAD/BASE of every figure: above 1 is more calls per second, but also more milliseconds
or more CPU per call, so read each column for what it counts.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_ROW = re.compile(r"^(?P<key>\s*[A-Za-z][^\d=]*?)\s+(?P<figures>-?\d[\d.]*(?:\s+-?\d[\d.]*)+)\s*$")
_NAMED = re.compile(r"(\w+/\w+)(?: =)? (-?\d[\d.]*)")
"""A ratio a bench prints, as ``c/b = 0.82`` or ``on/off 0.99`` (bench/trust.py)."""

Figures = dict[tuple[str, int], list[float]]
"""Per line (its leading words, its place among lines with those words): its figures."""


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def base_tree(commit: str) -> Path:
    """A worktree of ``commit`` with its own venv (the project installed with ``fast``),
    made once and kept."""
    cache = Path(os.environ.get("ACTOR_AB_CACHE", Path.home() / ".cache" / "actorbus-ab"))
    tree = cache / commit[:12]
    ready = tree / ".ab-ready"
    if ready.exists():
        return tree
    if tree.exists():  # a build that did not finish: start again
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
        subprocess.run(["rm", "-rf", str(tree)], check=True)
    cache.mkdir(parents=True, exist_ok=True)
    print(f"ab: building {commit[:12]} in {tree} (once)", file=sys.stderr, flush=True)
    git("worktree", "add", "--detach", str(tree), commit)
    subprocess.run([sys.executable, "-m", "venv", str(tree / ".venv")], check=True)
    pip = [str(tree / ".venv" / "bin" / "pip"), "install", "--quiet"]
    for args in (["--upgrade", "pip"], ["-e", f"{tree}[fast]"]):
        done = subprocess.run([*pip, *args], capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            raise SystemExit(f"ab: could not install {commit[:12]} in {tree}")
    ready.touch()
    return tree


def run(tree: Path, python: str, bench: list[str]) -> str:
    """The bench's output from ``tree`` (its own copy of the script), or exit on failure."""
    script, *args = bench
    done = subprocess.run(
        [python, str(tree / script), *args], cwd=tree, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"ab: the bench failed in {tree} (exit {done.returncode})")
    return done.stdout


def parse(output: str) -> tuple[list[str], Figures]:
    """The lines that carry no figures (headers, notes: shown once) and the figures."""
    text: list[str] = []
    figures: Figures = {}
    seen: dict[str, int] = {}

    def add(key: str, values: list[float]) -> None:
        place = seen[key] = seen.get(key, -1) + 1
        figures[(key, place)] = values

    for line in output.splitlines():
        row = _ROW.match(line)
        named = _NAMED.findall(line)
        if row:
            add(row["key"].rstrip(), [float(v) for v in row["figures"].split()])
        elif named:
            for name, value in named:
                add(name, [float(value)])
        elif line.strip():
            text.append(line)
    return text, figures


def median_of(runs: list[Figures]) -> Figures:
    keys = [k for k in runs[0] if all(k in r and len(r[k]) == len(runs[0][k]) for r in runs)]
    return {
        k: [statistics.median(r[k][i] for r in runs) for i in range(len(runs[0][k]))] for k in keys
    }


def figure(value: float) -> str:
    return f"{value:>10.0f}" if abs(value) >= 1000 else f"{value:>10.4g}"


def show(figures: Figures, fmt: Callable[[float], str] = figure) -> None:
    for (key, _), values in figures.items():
        print(f"  {key:24}" + "".join(fmt(v) for v in values))


def main() -> None:
    argv = sys.argv[1:]
    bench = ["bench/calls.py"]
    if "--" in argv:
        at = argv.index("--")
        argv, bench = argv[:at], argv[at + 1 :] or bench
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("base", help="the commit to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=2, help="runs per tree (at least 2)")
    parser.add_argument(
        "--head",
        default="",
        help="a commit to measure instead of the working tree (checked out like BASE: the "
        "working tree may change while the bench runs)",
    )
    args = parser.parse_args(argv)
    rounds = max(args.rounds, 2)
    commit = git("rev-parse", "--verify", f"{args.base}^{{commit}}")
    base = base_tree(commit)
    if args.head:
        head_commit = git("rev-parse", "--verify", f"{args.head}^{{commit}}")
        tree = base_tree(head_commit)
        head, dirty = head_commit[:12], ""
        head_side = (tree, str(tree / ".venv" / "bin" / "python"))
    else:
        head = git("rev-parse", "--short=12", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
        dirty = " + uncommitted changes" if changed else ""
        head_side = (ROOT, sys.executable)
    trees = {"BASE": (base, str(base / ".venv" / "bin" / "python")), "HEAD": head_side}
    outputs: dict[str, list[str]] = {"BASE": [], "HEAD": []}
    order = [("BASE", "HEAD") if i % 2 == 0 else ("HEAD", "BASE") for i in range(rounds)]
    for i, pair in enumerate(order):
        for side in pair:
            print(f"ab: round {i + 1}/{rounds}: {side}", file=sys.stderr, flush=True)
            outputs[side].append(run(*trees[side], bench))
    parsed = {side: [parse(o) for o in outs] for side, outs in outputs.items()}
    medians = {side: median_of([f for _, f in runs]) for side, runs in parsed.items()}
    print(f"bench: {' '.join(bench)}   rounds: {rounds} each, alternated")
    for side, label in (("BASE", commit[:12]), ("HEAD", head + dirty)):
        print(f"\n{side} ({label}), medians of {rounds} rounds:")
        for line in parsed[side][0][0][:3]:
            print(f"  {line.strip()}")
        show(medians[side])
    print("\nHEAD/BASE:")
    ratios: Figures = {}
    for key, b in medians["BASE"].items():
        h = medians["HEAD"].get(key)
        if h is not None and len(h) == len(b):
            ratios[key] = [x / y if y else float("nan") for x, y in zip(h, b, strict=True)]
    show(ratios, lambda r: f"{r:>10.2f}")
    missing = [k for k in medians["HEAD"] if k not in medians["BASE"]]
    if missing:
        print("only in HEAD: " + ", ".join(k for k, _ in missing))


if __name__ == "__main__":
    main()
