#!/usr/bin/env python3
"""Side-by-side micro-benchmark: `distillery bench` against the PyTorch reference.

Builds distillery in release, then runs, round after round, our benchmark with one and with
two Candle threads (RAYON_NUM_THREADS) and the PyTorch reference script, alternating the order
so that a slow spell of the machine hits both sides. Prints, per figure, the medians and the
median of the per-round ratios ours/PyTorch (ours at the faster thread count for that figure),
with the machine and the date; saves every run to docs/bench/microbench.json and regenerates
docs/benchmarks.md.

    scripts/bench.py                 # 3 rounds of the full reference workload
    scripts/bench.py --rounds 5
    scripts/bench.py --quick         # fewer steps, for a smoke test of the script itself

Environment: TORCH_PYTHON (python with torch; default ~/venvs/torch/bin/python, then
python3), TORCH_BENCH (the reference script; default ../shared/bench/torch_microbench.py from
the repository root), CARGO_TARGET_DIR (where cargo builds), DISTILLERY_BIN (a prebuilt
binary to measure instead; implies nothing is built).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from itertools import zip_longest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdoc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["student_gru64", "teacher_bilstm256x2"]
FIGURES = ["train_examples_per_s", "infer_b64_examples_per_s", "infer_b1_examples_per_s"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--models", default=",".join(MODELS), help="comma list of models to run")
    p.add_argument("--threads", default="1,2", help="Candle thread counts to try (comma list)")
    p.add_argument("--torch-threads", default="1,2", help="PyTorch thread counts to try")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--single-steps", type=int, default=1000)
    p.add_argument("--gemm-ms", type=int, default=150, help="per shape; 0 skips the GEMM rates")
    p.add_argument("--quick", action="store_true", help="20 steps, 100 single steps, 1 round")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per benchmark process")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = p.parse_args()
    if args.quick:
        args.steps, args.warmup, args.single_steps, args.rounds = 20, 5, 100, 1
    return args


def binary_path():
    if os.environ.get("DISTILLERY_BIN"):
        return Path(os.environ["DISTILLERY_BIN"])
    target = os.environ.get("CARGO_TARGET_DIR") or str(ROOT / "target")
    return Path(target) / "release" / "distillery"


def build():
    print("building distillery (release)...", file=sys.stderr, flush=True)
    subprocess.run(["cargo", "build", "--release", "--bin", "distillery"], cwd=ROOT, check=True)


def torch_python():
    """A python that imports torch, or None."""
    candidates = [os.environ.get("TORCH_PYTHON"), str(Path.home() / "venvs/torch/bin/python"),
                  "python3"]
    for python in filter(None, candidates):
        try:
            out = subprocess.run([python, "-c", "import torch; print(torch.__version__)"],
                                 capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0:
            return python, out.stdout.strip()
    return None, None


def torch_script():
    default = ROOT / ".." / "shared" / "bench" / "torch_microbench.py"
    path = Path(os.environ.get("TORCH_BENCH", default)).resolve()
    return path if path.is_file() else None


def run_json(cmd, env, timeout):
    """Runs a benchmark process and returns its last JSON line, with wall time and load."""
    load_before = os.getloadavg()[0]
    started = time.time()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({out.returncode}): {out.stderr[-2000:]}")
    line = [x for x in out.stdout.splitlines() if x.startswith("{")][-1]
    result = json.loads(line)
    result["_wall_s"] = time.time() - started
    result["_load_before"] = load_before
    result["_load_after"] = os.getloadavg()[0]
    return result


def workload_flags(args):
    return ["--models", args.models, "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--single-steps", str(args.single_steps)]


def ours_cmd(args):
    cmd = [str(binary_path()), "bench", *workload_flags(args)]
    return cmd + (["--gemm-ms", str(args.gemm_ms)] if args.gemm_ms else [])


def run_rounds(args, threads, torch_threads, torch):
    """Alternates the runs: {'ours': {t: [results]}, 'torch': {t: [results]}}."""
    runs = {"ours": {t: [] for t in threads}, "torch": {t: [] for t in torch_threads}}
    for r in range(args.rounds):
        ours = [("ours", t) for t in threads]
        theirs = [("torch", t) for t in torch_threads] if torch else []
        order = [v for pair in zip_longest(ours, theirs) for v in pair if v]
        if r % 2 == 1:
            order.reverse()
        for side, t in order:
            print(f"round {r + 1}/{args.rounds}: {side}, {t} thread(s)", file=sys.stderr,
                  flush=True)
            if side == "ours":
                env = {**os.environ, "RAYON_NUM_THREADS": str(t)}
                runs["ours"][t].append(run_json(ours_cmd(args), env, args.timeout))
            else:
                python, script = torch
                cmd = [python, str(script), *workload_flags(args), "--threads", str(t)]
                runs["torch"][t].append(run_json(cmd, dict(os.environ), args.timeout))
    return runs


def best_of(side_runs, model, fig):
    """Per thread count: the runs' figures; the medians; the thread count of the best."""
    values = {t: [run[model][fig] for run in rs] for t, rs in side_runs.items() if rs}
    medians = {t: statistics.median(v) for t, v in values.items()}
    best = max(medians, key=medians.get) if medians else None
    return values, medians, best


def summarize(runs, threads):
    """Medians per figure, each side at its best thread count, and paired median ratios."""
    summary = {}
    for model in [m for m in MODELS if m in runs_models(runs)]:
        for fig in FIGURES:
            ours, medians, best = best_of(runs["ours"], model, fig)
            entry = {"ours_median_by_threads": medians, "threads": best,
                     "ours_median": medians[best], "ours_runs": ours[best]}
            theirs, t_medians, t_best = best_of(runs["torch"], model, fig)
            if t_best is not None:
                ratios = [a / b for a, b in zip(ours[best], theirs[t_best])]
                entry.update(torch_median=t_medians[t_best], torch_threads=t_best,
                             torch_median_by_threads=t_medians, torch_runs=theirs[t_best],
                             ratio_median=statistics.median(ratios), ratios=ratios)
            summary[f"{model}.{fig}"] = entry
        gemm = [run[model].get("gemm") for t in threads for run in runs["ours"][t]]
        gemm = [g for g in gemm if g and g.get("train_gemm_fraction")]
        if gemm:
            summary[f"{model}.gemm"] = gemm_summary(gemm, runs, model, threads)
    return summary


def runs_models(runs):
    first = next(iter(runs["ours"].values()))
    return set(first[0]) if first else set()


def gemm_summary(reports, runs, model, threads):
    """Median fraction of the measured GEMM rate, per thread count and overall."""
    by_threads = {}
    for t in threads:
        fr = [run[model]["gemm"]["train_gemm_fraction"] for run in runs["ours"][t]
              if run[model].get("gemm")]
        gf = [run[model]["gemm"]["train_gflops"] for run in runs["ours"][t]
              if run[model].get("gemm")]
        if fr:
            by_threads[t] = {"train_gemm_fraction": statistics.median(fr),
                             "train_gflops": statistics.median(gf)}
    last = reports[-1]
    return {"by_threads": by_threads, "shapes_last_run": last["shapes"],
            "train_gflop_per_example": runs["ours"][threads[0]][0][model][
                "train_gemm_gflop_per_example"]}


def print_table(summary, threads):
    print(f"{'figure':48} {'ours':>10} {'pytorch':>10} {'ratio':>7}  threads")
    for key, e in summary.items():
        if key.endswith(".gemm"):
            continue
        torch_med = f"{e['torch_median']:10.0f}" if "torch_median" in e else f"{'-':>10}"
        ratio = f"{e['ratio_median']:7.2f}" if "ratio_median" in e else f"{'-':>7}"
        by_t = ", ".join(f"{t}:{v:.0f}" for t, v in e["ours_median_by_threads"].items())
        t_by = ", ".join(f"{t}:{v:.0f}" for t, v in e.get("torch_median_by_threads", {}).items())
        print(f"{key:48} {e['ours_median']:10.0f} {torch_med} {ratio}  ours {by_t}; torch {t_by}")
    for key, e in summary.items():
        if key.endswith(".gemm"):
            for t, g in e["by_threads"].items():
                print(f"{key:48} {t} thread(s): {g['train_gflops']:.1f} GFLOP/s, "
                      f"{100 * g['train_gemm_fraction']:.0f}% of the measured GEMM rate")


def main():
    args = parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    if not args.no_build and not os.environ.get("DISTILLERY_BIN"):
        build()
    python, torch_version = torch_python()
    script = torch_script()
    torch = (python, script) if python and script else None
    if torch is None:
        print("PyTorch or the reference script not found: running ours only", file=sys.stderr)

    machine = benchdoc.machine_info()
    machine["torch"] = torch_version
    started = time.time()
    torch_threads = [int(t) for t in args.torch_threads.split(",")]
    runs = run_rounds(args, threads, torch_threads, torch)
    summary = summarize(runs, threads)
    machine["load_after"] = os.getloadavg()
    print_table(summary, threads)

    result = {"date": benchdoc.utc_now(), "duration_s": time.time() - started,
              "command": "scripts/bench.py " + " ".join(sys.argv[1:]),
              "settings": {k: v for k, v in vars(args).items()},
              "torch_script": str(script) if script else None,
              "machine": machine, "summary": summary, "runs": runs}
    benchdoc.save_result("microbench", result)
    if not args.no_docs:
        benchdoc.render()


if __name__ == "__main__":
    main()
