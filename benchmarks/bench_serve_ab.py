"""A/B of two versions of `sent serve` in one run: a git revision (A) against the working tree (B).

    python benchmarks/bench_serve_ab.py --model FOLDER --onnx-cache DIR [--base HEAD] [--rounds 8]
        [--duration 10] [--concurrency 16] [--out benchmarks/results/serve-ab.json]

A is --base checked out with `git worktree add --detach` into --base-dir (/tmp/ab-base by
default; the checkout this script runs from is not touched, and a worktree this script made is
removed at the end unless --keep-base). B is the tree this script belongs to, uncommitted changes
included. Each side runs bench_serve.py's sent-onnx-int8 configuration (`sent serve --runtime onnx
--quantize --no-accuracy-gate`, the same model, options and ONNX cache) with PYTHONPATH at its own
tree, started from a scratch folder so that nothing else on sys.path comes first; which
`sentiment_cli` each side imports is checked before the first round and recorded.

A round measures each side once, each on a server of its own: start it, warm it up (a short
closed loop), drive bench_serve.measure's closed loop (loadgen.py, --concurrency clients for
--duration seconds: req/s, and the server process's CPU per request from /proc/PID/stat), stop it.
Sides alternate A B, B A, A B, ... so neither always goes first: this machine's speed drifts by
several per cent within minutes, and a ratio within one round is what stays comparable. Each round
gives B/A of req/s and of server CPU per request; the summary holds their medians and how many
rounds B won. The 1-minute load average is recorded at the start and end and around every
measurement. Without --model a random-weight DistilBERT-base is built, as bench_serve.py does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_serve

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIG = "sent-onnx-int8"  # bench_serve.configs' name for `sent serve --runtime onnx --quantize`
SIDES = ("A", "B")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.rstrip()


def base_worktree(rev: str, where: Path) -> tuple[str, bool]:
    """rev's commit checked out at `where`, and whether this call made the worktree. One already
    there is reused only if it holds that commit with no changes."""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    if where.exists():
        have = git("-C", str(where), "rev-parse", "HEAD")
        dirty = git("-C", str(where), "status", "--porcelain", "--untracked-files=no")
        if have != commit or dirty:
            sys.exit(f"{where} holds {have[:12]}{' with changes' if dirty else ''}, not {rev} "
                     f"({commit[:12]}): remove it (git worktree remove --force {where}) or pass "
                     "another --base-dir")
        return commit, False
    git("worktree", "add", "--detach", str(where), commit)
    return commit, True


def imported_from(tree: Path, cwd: Path) -> str:
    """Where `sentiment_cli` comes from with PYTHONPATH=tree, run from cwd as the server is; exits
    if that is not inside tree (an install or the current folder shadowing it)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", "import sentiment_cli; print(sentiment_cli.__file__)"],
                         cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.rstrip()
    path = Path(out).resolve()
    if not path.is_relative_to(tree.resolve()):
        sys.exit(f"with PYTHONPATH={tree}, sentiment_cli is imported from {path}, not from that tree")
    return str(path)


def side_config(model: Path, work: Path, onnx_cache: Path, side: str, tree: Path) -> bench_serve.Config:
    """bench_serve's sent-onnx-int8 configuration, run from `tree` (its own prediction log)."""
    (cfg,) = [c for c in bench_serve.configs(model, work / side, [0], onnx_cache) if c.name == CONFIG]
    return dataclasses.replace(cfg, name=f"{side}-{CONFIG}", env={**cfg.env, "PYTHONPATH": str(tree)})


def loadavg() -> list[float]:
    """The 1-, 5- and 15-minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def order(round_: int) -> tuple[str, str]:
    """A B, B A, A B, ...: the sides of round round_ (from 0) in the order they run."""
    return SIDES if round_ % 2 == 0 else SIDES[::-1]


def measure_side(cfg: bench_serve.Config, work: Path, texts: list[str], args) -> dict:
    """A fresh server of cfg: warmed up, measured, stopped."""
    with bench_serve.server(cfg, work) as srv:
        bench_serve.closed_loop(srv.url, bench_serve.Texts(texts), args.concurrency, args.warmup)
        r = bench_serve.measure(srv, "sent", bench_serve.Texts(texts), args.concurrency, args.duration)
    return dataclasses.asdict(r)


def _ratio(b: float | None, a: float | None) -> float | None:
    """b / a, or None (JSON null) where a side gave nothing to divide."""
    return round(b / a, 4) if a and b is not None else None


def summarize(rounds: list[dict]) -> dict:
    """Each round's B/A of req/s and of server CPU per request, their medians, the rounds B won
    (more req/s; less CPU per request) and each side's median. rounds: [{"A": r, "B": r}, ...],
    r holding bench_serve.Result's fields."""
    rps = [_ratio(r["B"]["rps"], r["A"]["rps"]) for r in rounds]
    cpu = [_ratio(r["B"]["cpu_ms_per_req"], r["A"]["cpu_ms_per_req"]) for r in rounds]

    def median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return round(statistics.median(known), 4) if known else None

    return {"rounds": len(rounds), "rps_ratio_b_over_a": rps, "median_rps_ratio": median(rps),
            "rounds_b_more_rps": sum(x is not None and x > 1 for x in rps),
            "cpu_ratio_b_over_a": cpu, "median_cpu_ratio": median(cpu),
            "rounds_b_less_cpu": sum(x is not None and x < 1 for x in cpu),
            "median_rps": {s: median([r[s]["rps"] for r in rounds]) for s in SIDES},
            "median_cpu_ms_per_req": {s: median([r[s]["cpu_ms_per_req"] for r in rounds]) for s in SIDES},
            "errors": {s: sum(r[s]["errors"] for r in rounds) for s in SIDES}}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a model folder; default: random DistilBERT-base")
    parser.add_argument("--onnx-cache", type=Path, help="the ONNX exports (default: a fresh folder)")
    parser.add_argument("--base", default="HEAD", help="the git revision A runs (default HEAD)")
    parser.add_argument("--base-dir", type=Path, default=Path("/tmp/ab-base"),
                        help="where A's worktree is checked out")
    parser.add_argument("--keep-base", action="store_true", help="leave a worktree this run made")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of A and B, one each")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "serve-ab.json")
    return parser.parse_args()


def run_rounds(configs: dict, work: Path, texts: list[str], args) -> list[dict]:
    rounds = []
    for i in range(args.rounds):
        this: dict = {"order": "".join(order(i))}
        for side in order(i):
            this[side] = r = measure_side(configs[side], work, texts, args)
            print(f"round {i + 1} {side} {r['rps']:7.1f} req/s  cpu {r['cpu_ms_per_req']:5.2f} ms/req  "
                  f"p50 {r['p50_ms']:6.1f} ms  errors {r['errors']}  load {r['loadavg_before']}"
                  f"->{r['loadavg']}", flush=True)
        print(f"round {i + 1} B/A req/s {_ratio(this['B']['rps'], this['A']['rps'])}", flush=True)
        rounds.append(this)
    return rounds


def main() -> None:
    args = parse_args()
    bench_serve.stop_servers_on_sigterm()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = Path(tempfile.mkdtemp(prefix="bench-serve-ab-"))
    model = args.model or bench_serve.build_random_distilbert(work / "distilbert-random")
    onnx_cache = args.onnx_cache or work / "onnx"
    commit, made = base_worktree(args.base, args.base_dir)
    trees = {"A": args.base_dir, "B": REPO}
    texts = bench_serve.rt_split("test")[0]
    results: dict = {
        "machine": bench_serve.machine(), "model": str(args.model or "distilbert-base random"),
        "configuration": CONFIG, "concurrency": args.concurrency, "duration_s": args.duration,
        "warmup_s": args.warmup, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "A": {"revision": args.base, "commit": commit, "imports": imported_from(trees["A"], work)},
        "B": {"tree": str(REPO), "head": git("rev-parse", "HEAD"), "imports": imported_from(REPO, work),
              "uncommitted": git("status", "--porcelain", "--untracked-files=no").splitlines()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_before": loadavg()}
    try:
        configs = {s: side_config(model, work, onnx_cache, s, trees[s]) for s in SIDES}
        rounds = run_rounds(configs, work, texts, args)
    finally:
        if made and not args.keep_base:
            git("worktree", "remove", "--force", str(args.base_dir))
    results.update(loadavg_after=loadavg(), summary=summarize(rounds), rounds=rounds)
    print(json.dumps(results["summary"], indent=2))
    bench_serve.write_results(args.out, results)


if __name__ == "__main__":
    main()
