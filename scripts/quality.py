#!/usr/bin/env python3
"""Accuracy and speed of the models a job makes, on real corpora: docs/quality.md.

For each corpus folder (train.jsonl, valid.jsonl, test.jsonl) it trains, with the release
binary's `distillery train`, one model per variant, then scores each on the test file with
`distillery eval --speed`:

    recurrent   the default job: a 2-layer BiLSTM teacher, then the distilled GRU student
    alone       the default student trained on the labels only (teacher kind none)
    minilm      a frozen all-MiniLM-L6-v2 teacher with a linear head, distilled student
    minilm-aug  the same, with augmented transfer rows (distillation.augment.factor)
                (`minilm-augN`: N rows per training row)

Variants run two at a time (one Candle thread each), so a 2-core machine is kept busy.
Results go to docs/bench/quality.json and docs/quality.md.

    scripts/quality.py --data ../shared/data --pretrained-dir pretrained
    scripts/quality.py --corpora bbc-news --variants alone,minilm --epochs 3
    scripts/quality.py --render      # docs/quality.md again from the saved results

Environment: DISTILLERY_BIN (the binary; default target/release/distillery).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdoc  # noqa: E402

ROOT = benchdoc.ROOT
DOC = ROOT / "docs" / "quality.md"
PRETRAINED = "all-MiniLM-L6-v2"
VARIANTS = ["recurrent", "alone", "minilm", "minilm-aug"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT / ".." / "shared" / "data"))
    p.add_argument("--corpora", default="tweets-sentiment,bbc-news")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--pretrained-dir", help=f"folder holding {PRETRAINED}/")
    p.add_argument("--augment", default="2",
                   help="augment factor of minilm-aug: N, or CORPUS=N,... (others get 2)")
    p.add_argument("--epochs", help="training.epochs: N, or CORPUS=N,... (default: the job's)")
    p.add_argument("--parallel", type=int, default=2, help="variants trained at once")
    p.add_argument("--speed-seconds", type=float, default=3.0)
    p.add_argument("--keep", help="folder to keep the models in (default: a temp folder)")
    p.add_argument("--merge", action="store_true",
                   help="keep the saved results of other corpus/variant pairs")
    return p.parse_args()


def binary():
    path = os.environ.get("DISTILLERY_BIN") or str(ROOT / "target" / "release" / "distillery")
    if not Path(path).is_file():
        sys.exit(f"no binary at {path}: run `cargo build --release` or set DISTILLERY_BIN")
    return path


def per_corpus(spec, corpus, default):
    """The value `spec` (`N`, or `CORPUS=N,...`) gives `corpus`; None when it names none."""
    if not spec:
        return default
    if "=" not in spec:
        return int(spec)
    values = dict(part.split("=") for part in spec.split(",") if part)
    return int(values[corpus]) if corpus in values else default


def augment_factor(variant, corpus, args):
    """Augmented rows per training row: 0 for `minilm`, N for `minilm-augN`, else
    --augment's value for the corpus."""
    if variant == "minilm":
        return 0
    suffix = variant.removeprefix("minilm-aug")
    return int(suffix) if suffix else per_corpus(args.augment, corpus, 2)


def job_config(corpus, variant, args):
    """The job JSON of a variant; everything not named keeps its default."""
    config = {}
    if variant == "alone":
        config["teacher"] = {"kind": "none"}
    elif variant.startswith("minilm"):
        config["teacher"] = {"kind": "transformer", "pretrained": PRETRAINED}
        factor = augment_factor(variant, corpus, args)
        config["distillation"] = {"augment": {"factor": factor}}
    epochs = per_corpus(args.epochs, corpus, None)
    if epochs:
        config["training"] = {"epochs": epochs}
    return config


def run(cmd, env):
    started = time.time()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr[-3000:]}")
    return out.stdout, time.time() - started


def train_and_eval(corpus, variant, args, work):
    """Trains one variant on one corpus; its test metrics, speeds and phase times."""
    data = Path(args.data) / corpus
    out = work / corpus / variant
    out.parent.mkdir(parents=True, exist_ok=True)
    config = out.parent / f"{variant}.json"
    config.write_text(json.dumps(job_config(corpus, variant, args)))
    env = dict(os.environ, RAYON_NUM_THREADS="1")
    extra = ["--pretrained-dir", args.pretrained_dir] if args.pretrained_dir else []
    print(f"[{benchdoc.utc_now()}] {corpus} {variant}: training", file=sys.stderr, flush=True)

    train_cmd = [binary(), "train", "--train", str(data / "train.jsonl"), "--valid",
                 str(data / "valid.jsonl"), "--config", str(config), "--out", str(out),
                 "--json", *extra]
    _, train_s = run(train_cmd, env)
    eval_cmd = [binary(), "eval", "--model", str(out), "--data", str(data / "test.jsonl"),
                "--json", "--speed", str(args.speed_seconds), *extra]
    stdout, _ = run(eval_cmd, env)

    manifest = json.loads((out / "manifest.json").read_text())
    teacher = manifest.get("teacher") or manifest.get("transformer_teacher") or {}
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update(corpus=corpus, variant=variant, config=job_config(corpus, variant, args),
                  wall_s=train_s, teacher_train_s=teacher.get("train_seconds"),
                  student_train_s=manifest["student"]["train_seconds"],
                  student_parameters=manifest["student"]["parameters"])
    print(f"[{benchdoc.utc_now()}] {corpus} {variant}: done in {train_s:.0f} s",
          file=sys.stderr, flush=True)
    return result


def pct(metrics, key):
    return "-" if not metrics else f"{100 * metrics[key]:.1f}"


def speed(result, role, key):
    s = result.get("speed", {}).get(role)
    return "-" if not s else f"{s[key]:,.0f}"


def table(results):
    lines = [
        "| corpus | variant | teacher acc | teacher F1 | student acc | student F1 | agreement "
        "| teacher s | student s | wall s | student texts/s b1 / b64 | teacher texts/s b1 / b64 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        teacher, student = r.get("teacher"), r.get("student")
        agreement = student.get("agreement") if student else None
        t_s = "-" if r["teacher_train_s"] is None else f"{r['teacher_train_s']:.0f}"
        lines.append(
            f"| {r['corpus']} | {r['variant']} | {pct(teacher, 'accuracy')} "
            f"| {pct(teacher, 'macro_f1')} | {pct(student, 'accuracy')} "
            f"| {pct(student, 'macro_f1')} "
            f"| {'-' if agreement is None else f'{100 * agreement:.1f}'} | {t_s} "
            f"| {r['student_train_s']:.0f} | {r['wall_s']:.0f} "
            f"| {speed(r, 'student', 'batch_1_texts_per_s')} / "
            f"{speed(r, 'student', 'batch_64_texts_per_s')} "
            f"| {speed(r, 'teacher', 'batch_1_texts_per_s')} / "
            f"{speed(r, 'teacher', 'batch_64_texts_per_s')} |")
    return lines


def render(saved):
    lines = [
        "# Model quality on real corpora",
        "",
        "<!-- Generated by scripts/quality.py from docs/bench/quality.json; do not edit. -->",
        "",
        f"`{saved['command']}` ({saved['date']}). Each variant is a `distillery train` run with "
        "the job defaults except where named, scored by `distillery eval --speed` on the "
        "corpus's test file. Accuracy and macro-F1 in percent on the test rows; agreement is "
        "the share of test rows where the student predicts the teacher's label. Times are "
        "seconds of one Candle thread per run (two runs at a time, so each had about one core): "
        "`teacher s` is the teacher's phase (for MiniLM: embedding the training and "
        "validation texts once, then fitting the head), `student s` the student's, `wall s` "
        "the whole `train` command (labelling the transfer set and augmented rows "
        "included). Prediction speed is texts per second with tokenization, one at a time "
        "and in batches of 64, measured while the other run trained.",
        "",
        *benchdoc.machine_section(saved),
        "",
        *table(saved["results"]),
        "",
        "Variants: `recurrent` is the default job (2-layer BiLSTM 256 teacher over 128-wide "
        "embeddings, GRU 64 student over 64-wide embeddings, T 4, alpha 0.7); `alone` the same "
        "student without a teacher; `minilm` a frozen all-MiniLM-L6-v2 teacher (mean pooling, "
        "linear head) distilled without augmentation; `minilm-aug` the same with "
        "`distillation.augment.factor` augmented transfer rows per training row (masked, "
        f"replaced and n-gram variants; factors: `{saved['augment']}`).",
        "",
    ]
    notes = ROOT / "docs" / "bench" / "quality-notes.md"
    if notes.is_file():
        lines += ["## Notes (written by hand)", "", notes.read_text().strip(), ""]
    DOC.write_text("\n".join(lines))
    print(f"wrote {DOC.relative_to(ROOT)}")


def main():
    if sys.argv[1:] == ["--render"]:
        render(benchdoc.load_result("quality"))
        return
    args = parse_args()
    corpora = [c for c in args.corpora.split(",") if c]
    variants = [v for v in args.variants.split(",") if v]
    if any(v.startswith("minilm") for v in variants) and not args.pretrained_dir:
        sys.exit("the minilm variants need --pretrained-dir")
    saved = {"date": benchdoc.utc_now(), "machine": benchdoc.machine_info(),
             "command": "scripts/quality.py " + " ".join(sys.argv[1:]),
             "augment": args.augment}
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="quality."))
    # Longest first, so that two at a time finish close together.
    cost = {"recurrent": 0, "minilm-aug": 1, "minilm": 2, "alone": 3}
    jobs = sorted(((c, v) for c in corpora for v in variants),
                  key=lambda job: (corpora.index(job[0]), cost.get(job[1], 9)))
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = [pool.submit(train_and_eval, c, v, args, work) for c, v in jobs]
        results = [f.result() for f in futures]
    order = {job: i for i, job in enumerate((c, v) for c in corpora for v in variants)}
    saved["results"] = sorted(results, key=lambda r: order[(r["corpus"], r["variant"])])
    earlier = benchdoc.load_result("quality") if args.merge else None
    if earlier:
        new = {(r["corpus"], r["variant"]) for r in results}
        kept = [r for r in earlier["results"] if (r["corpus"], r["variant"]) not in new]
        saved["results"] = kept + saved["results"]
        saved["command"] = earlier["command"] + "; then " + saved["command"]
        saved["augment"] = earlier["augment"]
    benchdoc.save_result("quality", saved)
    render(saved)
    print("\n".join(table(saved["results"])))


if __name__ == "__main__":
    main()
