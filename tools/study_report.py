"""The study's report: statistics over seeds, a verdict per claim of the tutorial, a figure and a table.

    python -m tools.study report [--runs study/runs] [--out study]

It reads every run folder under --runs (what `python -m tools.study run` commits), writes
<out>/report.md and <out>/report.png, and prints the Markdown. It works on a partial study: every
number says how many seeds it rests on, and configurations not yet run are listed as such.

The statistics, for a metric x over the n seeds of one configuration:
    mean  m = (1/n) sum_i x_i
    SD    s = sqrt( sum_i (x_i - m)^2 / (n - 1) )           (sample standard deviation, n >= 2)
Two configurations A and B are compared paired by seed, over the n seeds both have:
    d_i = x_i(B) - x_i(A),  mean difference  d = (1/n) sum_i d_i,  s_d its sample SD,
    95% interval  d -+ t(0.975, n - 1) * s_d / sqrt(n)          (Student's t, n >= 2)
A claim is "supported" when the interval excludes 0 on the side the claim predicts, "contradicted"
when it excludes 0 on the other side, and "not shown" when it contains 0 (or n < 2: no interval).
"""
import argparse
import json
import math
import sys
from collections import Counter, namedtuple
from pathlib import Path

import matplotlib
import numpy as np
from ruamel.yaml import YAMLError

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lenet_mixup.params import read_yaml  # noqa: E402
from lenet_mixup.plotting import COLORS, style  # noqa: E402
from lenet_mixup.stage import UserError, atomic_output, run  # noqa: E402
from tools.study import RUNS, plan  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "study"
EPSILONS = ("1/255", "2/255", "4/255", "8/255")  # evaluate.fgsm_eps_255 of every planned run
MAIN_ALPHA = 1.0  # the tutorial's alpha: the mixup configuration the claims are judged on
# What FastEstimator's tutorial logged (official CIFAR-10 files, TensorFlow, one run each).
FASTESTIMATOR = [("baseline", "0.7259", "0.6976", "0.7217", "0.6855"),
                 ("mixup", "0.7458", "0.7410", "0.753", "0.7409")]

Metric = namedtuple("Metric", "key label short better path")  # better: +1 higher is better, -1 lower
METRICS = [
    Metric("peak_acc", "peak eval accuracy", "peak acc", +1, ("summary", "peak_eval_acc")),
    Metric("final_acc", "final eval accuracy", "final acc", +1, ("summary", "final_eval_acc")),
    Metric("final_loss", "final eval loss", "final loss", -1, ("summary", "final_eval_loss")),
    Metric("gap", "generalization gap (train - eval accuracy, final weights)", "gen. gap", -1,
           ("evaluation", "final", "generalization_gap")),
    Metric("ece_final", "ECE, final weights", "ECE final", -1, ("evaluation", "final", "ece")),
    Metric("ece_best", "ECE, lowest-loss weights", "ECE lowest-loss", -1, ("evaluation", "best", "ece")),
    *[Metric(f"fgsm_{w}_{e}", f"FGSM accuracy at {e}, {label} weights", f"FGSM {e} {label}", +1,
             ("evaluation", w, "fgsm_acc", e))
      for w, label in (("final", "final"), ("best", "lowest-loss")) for e in EPSILONS],
]
BY_KEY = {m.key: m for m in METRICS}
SPEED = {"train_seconds": ("summary", "train_seconds"), "examples_per_sec": ("summary", "examples_per_sec")}
RUN_KEYS = ("name", "variant", "seed", "alpha", "precision", "code_commit", "prepared_md5")
VARYING_PARAMS = {"train.seed", "mixup.alpha", "train.precision", "train.device"}  # what the plan sets

Config = namedtuple("Config", "variant alpha precision")
BASELINE, MIXUP = Config("baseline", None, "fp32"), Config("mixup", MAIN_ALPHA, "fp32")
BASELINE_BF16, MIXUP_BF16 = Config("baseline", None, "bf16"), Config("mixup", MAIN_ALPHA, "bf16")


def label(config, short=False):
    """'baseline fp32', 'mixup α=1.0 fp32', 'mixup α=1.0 bf16'."""
    alpha = f" α={config.alpha}" if config.variant == "mixup" else ""
    return f"{config.variant}{alpha}" + ("" if short and config.precision == "fp32" else f" {config.precision}")


# ---------------------------------------------------------------- reading the runs

def read_json(folder, name):
    try:
        return json.loads((folder / name).read_text())
    except FileNotFoundError:
        raise UserError(f"{folder}: no {name}: not a finished study run (remove the folder or rerun it)") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{folder}: {name} is not valid JSON ({e})") from None


def dig(folder, files, path):
    """files[path[0]][path[1]]...: a number, or a UserError naming the folder and the missing key."""
    node = files[path[0]]
    for key in path[1:]:
        if not isinstance(node, dict) or key not in node:
            raise UserError(f"{folder}: {path[0]}.json has no {'.'.join(path[1:])}")
        node = node[key]
    if isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node):
        raise UserError(f"{folder}: {path[0]}.json {'.'.join(path[1:])} is {node!r}, not a number")
    return float(node)


def flatten(params, prefix=""):
    flat = {}
    for key, value in params.items():
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def load_run(folder):
    """One run folder as {"info": run.json, "config", "seed", "values": {metric key: number}, "params"}."""
    info = read_json(folder, "run.json")
    files = {"summary": read_json(folder, "summary.json"), "evaluation": read_json(folder, "evaluation.json")}
    missing = [k for k in RUN_KEYS if k not in info]
    if missing:
        raise UserError(f"{folder}: run.json has no {', '.join(missing)}")
    if info["variant"] not in ("baseline", "mixup") or info["precision"] not in ("fp32", "bf16") \
            or isinstance(info["seed"], bool) or not isinstance(info["seed"], int) \
            or (info["variant"] == "mixup") != isinstance(info["alpha"], (int, float)):
        raise UserError(f"{folder}: run.json names no planned configuration (variant {info['variant']!r}, "
                        f"alpha {info['alpha']!r}, precision {info['precision']!r}, seed {info['seed']!r})")
    try:
        params = read_yaml((folder / "params.yaml").read_text())
    except (OSError, YAMLError) as e:
        raise UserError(f"{folder}: params.yaml unreadable ({type(e).__name__})") from None
    if not isinstance(params, dict):
        raise UserError(f"{folder}: params.yaml is not a mapping of sections")
    alpha = float(info["alpha"]) if info["variant"] == "mixup" else None
    return {"info": info, "folder": folder, "seed": info["seed"], "params": flatten(params),
            "config": Config(info["variant"], alpha, info["precision"]),
            "values": {m.key: dig(folder, files, m.path) for m in METRICS}
            | {k: dig(folder, files, path) for k, path in SPEED.items()}}


def load_runs(runs_dir):
    """Every run under runs_dir, as {config: {seed: run}}; folders starting with '.' are unfinished copies."""
    if not runs_dir.is_dir():
        raise UserError(f"no run folder {runs_dir}: run `python -m tools.study run` first (or pass --runs)")
    found = {}
    for folder in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        r = load_run(folder)
        seeds = found.setdefault(r["config"], {})
        if r["seed"] in seeds:
            raise UserError(f"{folder}: the same configuration and seed as {seeds[r['seed']]['folder']}")
        seeds[r["seed"]] = r
    if not found:
        raise UserError(f"no runs in {runs_dir}: run `python -m tools.study run` first")
    return found


def planned_configs():
    """{config: [seeds]} in the plan's order (tools.study.plan)."""
    configs = {}
    for p in plan():
        configs.setdefault(Config(p["variant"], p["alpha"], p["precision"]), []).append(p["seed"])
    return configs


def in_order(configs):
    """fp32 before bf16, the baseline before mixup, mixup by alpha; each once."""
    return sorted(set(configs), key=lambda c: (c.precision != "fp32", c.variant != "baseline", c.alpha or 0))


def series(runs, config, key):
    """{seed: value} of one metric in one configuration (empty if not yet run)."""
    return {seed: r["values"][key] for seed, r in sorted(runs.get(config, {}).items())}


# ---------------------------------------------------------------- statistics

def t_quantile(p, df):
    """q such that P(T <= q) = p, T Student's t with df degrees of freedom (0.5 < p < 1).

    P(T <= q) = 1/2 + integral_0^q f(x) dx,  f(x) = G((df+1)/2) / (sqrt(df pi) G(df/2)) (1 + x^2/df)^-((df+1)/2),
    the integral by Simpson's rule on 4000 intervals, q by bisection. t(0.975, 2) = 4.302653.
    """
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(q):
        x = np.linspace(0.0, q, 4001)
        f = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
        return 0.5 + (x[1] - x[0]) / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    low, high = 0.0, 1.0
    while cdf(high) < p:
        high *= 2
    for _ in range(60):
        low, high = (low, (low + high) / 2) if cdf((low + high) / 2) >= p else ((low + high) / 2, high)
    return (low + high) / 2


Spread = namedtuple("Spread", "n mean sd")  # sd None when n < 2
Paired = namedtuple("Paired", "n mean low high")  # low/high None when n < 2


def spread(values):
    values = list(values)
    if not values:
        return Spread(0, None, None)
    return Spread(len(values), float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None)


def paired(a, b):
    """b - a over the seeds both {seed: value} hold: mean difference and its 95% t-interval."""
    seeds = sorted(set(a) & set(b))
    d = [b[s] - a[s] for s in seeds]
    if len(d) < 2:
        return Paired(len(d), d[0] if d else None, None, None)
    half = t_quantile(0.975, len(d) - 1) * float(np.std(d, ddof=1)) / math.sqrt(len(d))
    mean = float(np.mean(d))
    return Paired(len(d), mean, mean - half, mean + half)


def excludes_zero(p):
    return p.low is not None and (p.low > 0 or p.high < 0)


def verdict(p, better):
    """'supported' / 'contradicted' / 'not shown' for a difference (mixup - baseline) whose good sign is `better`."""
    if p.n == 0:
        return "not yet run"
    if p.low is None:
        return "not shown (n=1: no interval)"
    if not excludes_zero(p):
        return f"not shown (n={p.n})"
    return f"{'supported' if p.mean * better > 0 else 'contradicted'} (n={p.n})"


# ---------------------------------------------------------------- Markdown

def fmt(x, signed=False, digits=4):
    return "-" if x is None else f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def fmt_spread(s, digits=4):
    if s.n == 0:
        return "not yet run"
    if s.n == 1:
        return f"{fmt(s.mean, digits=digits)} (n=1: no spread)"
    return f"{fmt(s.mean, digits=digits)} ± {fmt(s.sd, digits=digits)} (n={s.n})"


def fmt_paired(p):
    if p.n == 0:
        return "no paired seeds yet"
    if p.low is None:
        return f"{fmt(p.mean, True)} (n=1: no interval)"
    return f"{fmt(p.mean, True)} [{fmt(p.low, True)}, {fmt(p.high, True)}] (n={p.n})"


def plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def claims(runs):
    """(claim, comparison, metric, Paired of mixup - baseline) for every claim the report judges."""
    rows = []

    def add(claim, comparison, mixup_key, baseline_key):
        p = paired(series(runs, BASELINE, baseline_key), series(runs, MIXUP, mixup_key))
        rows.append((claim, comparison, BY_KEY[mixup_key], p))
    add("gives higher accuracy", "peak eval accuracy", "peak_acc", "peak_acc")
    add("gives higher accuracy", "final eval accuracy", "final_acc", "final_acc")
    add("over-fits less", "generalization gap (lower)", "gap", "gap")
    add("over-fits less", "final eval loss (lower)", "final_loss", "final_loss")
    for e in EPSILONS:
        add("is more robust to FGSM", f"{e}, final weights against the baseline's final weights",
            f"fgsm_final_{e}", f"fgsm_final_{e}")
    for e in EPSILONS:
        add("is more robust to FGSM", f"{e}, final weights against the early-stopped baseline (lowest-loss weights)",
            f"fgsm_final_{e}", f"fgsm_best_{e}")
    calibration = "is better calibrated (not in the tutorial)"
    add(calibration, "ECE, final weights (lower)", "ece_final", "ece_final")
    add(calibration, "ECE, lowest-loss weights of both (lower)", "ece_best", "ece_best")
    return rows


def short_claim(comparison, m):
    """'peak acc', 'FGSM 1/255', 'FGSM 1/255 vs early-stopped', 'ECE final': a claims row in few words."""
    if m.key.startswith("fgsm"):
        return m.short.replace(" final", "") + (" vs early-stopped" if "early-stopped" in comparison else "")
    return m.short


def alpha_comparison(runs, alphas):
    """Mean final accuracy per alpha, the best one, and each alpha against alpha 1.0 (paired by seed)."""
    means = {a: spread(series(runs, Config("mixup", a, "fp32"), "final_acc").values()) for a in alphas}
    ran = {a: s for a, s in means.items() if s.n}
    best = max(ran, key=lambda a: ran[a].mean) if ran else None
    reference = series(runs, MIXUP, "final_acc")
    against = {a: paired(reference, series(runs, Config("mixup", a, "fp32"), "final_acc")) for a in alphas
               if a != MAIN_ALPHA}
    return means, best, against


def distinguishable(p):
    if p.n == 0:
        return "not yet run"
    if p.low is None:
        return "not shown (n=1: no interval)"
    return "distinguishable (the interval excludes 0)" if excludes_zero(p) else "not distinguishable (contains 0)"


def bf16_rows(runs, fp32, bf16):
    """Per metric: bf16 - fp32 paired by seed, and whether it is within seed noise by either criterion."""
    rows = []
    for m in METRICS:
        a, b = series(runs, fp32, m.key), series(runs, bf16, m.key)
        p, noise = paired(a, b), spread(a.values())
        contains = "-" if p.low is None else ("no" if excludes_zero(p) else "yes")
        smaller = "-" if p.n == 0 or noise.sd is None else ("yes" if abs(p.mean) <= noise.sd else "no")
        rows.append([m.label, fmt_spread(spread(a[s] for s in sorted(set(a) & set(b)))),
                     fmt_spread(spread(b[s] for s in sorted(set(a) & set(b)))), fmt_paired(p), contains,
                     fmt(noise.sd) + f" (n={noise.n})" if noise.sd is not None else "-", smaller])
    return rows


def noise_summary(rows):
    """One line: on how many metrics bf16 - fp32 is within seed noise by criterion (a) and by (b)."""
    parts = []
    for column, criterion in ((4, "(a) the interval contains 0"), (6, "(b) |difference| <= fp32 SD")):
        judged = [r for r in rows if r[column] != "-"]
        outside = [r[0] for r in judged if r[column] == "no"]
        parts.append(f"by {criterion}, on {len(judged) - len(outside)} of {len(judged)} metrics"
                     + (f" (not on: {'; '.join(outside)})" if outside else ""))
    return "Within seed noise " + "; ".join(parts) + "."


def speed_rows(runs):
    rows = []
    for fp32, bf16 in ((BASELINE, BASELINE_BF16), (MIXUP, MIXUP_BF16)):
        cells = [fp32.variant]
        for key in ("train_seconds", "examples_per_sec"):
            a, b = series(runs, fp32, key), series(runs, bf16, key)
            seeds = sorted(set(a) & set(b))
            ratio = np.mean([b[s] for s in seeds]) / np.mean([a[s] for s in seeds]) if seeds else None
            cells += [fmt_spread(spread(a[s] for s in seeds), digits=0),
                      fmt_spread(spread(b[s] for s in seeds), digits=0),
                      f"{ratio:.2f} (n={len(seeds)})" if ratio is not None else "no paired seeds yet"]
        rows.append(cells)
    return rows


def provenance(runs):
    """Code commits, data checksums, torch builds and hosts, and any param the runs disagree on."""
    everything = [r for seeds in runs.values() for r in seeds.values()]
    lines = []
    for key, what in (("code_commit", "code commits"), ("prepared_md5", "prepared-data md5s"),
                      ("torch", "torch builds"), ("host", "hosts")):
        counts = Counter(str(r["info"].get(key, "?")) for r in everything)
        lines.append(f"- {what}: " + "; ".join(f"`{v}` ({plural(n, 'run')})" for v, n in sorted(counts.items())))
    keys = sorted({k for r in everything for k in r["params"]} - VARYING_PARAMS)
    differ = [k for k in keys if len({json.dumps(r["params"].get(k)) for r in everything}) > 1]
    lines.append("- params.yaml: " + ("the runs agree on every param but seed, alpha and precision" if not differ
                                      else "the runs DIFFER in " + ", ".join(f"`{k}`" for k in differ)
                                      + " (an absent key reads as null)"))
    return lines


def markdown(runs, configs, alphas):
    total = sum(len(s) for s in runs.values())
    planned = sum(len(s) for s in configs.values())
    done = sum(len(set(runs.get(c, {})) & set(seeds)) for c, seeds in configs.items())
    base_n, mix_n = len(runs.get(BASELINE, {})), len(runs.get(MIXUP, {}))
    out = ["# Mixup study: the statistics", "",
           f"{plural(total, 'run')} read ({done} of the {planned} planned). Regenerate with "
           "`python -m tools.study report`. Each number is over seeds: "
           "mean ± sample SD (n seeds); a difference is paired by seed, with its 95% t-interval "
           "(mean ± t(0.975, n-1)·SD/√n) in brackets. Verdicts: **supported** (the interval excludes 0 in "
           "mixup's favour), **contradicted** (it excludes 0 against mixup), **not shown** (it contains 0, "
           "or n=1).", "", "![the study: every seed a dot](report.png)", "", "## Runs", ""]
    rows = []
    for config in configs | {c: [] for c in runs if c not in configs}:
        seeds = sorted(runs.get(config, {}))
        missing = sorted(set(configs.get(config, [])) - set(seeds))
        status = ("not in the plan" if config not in configs else "not yet run" if not seeds
                  else f"missing seeds {missing}" if missing else "complete")
        rows.append([label(config), len(configs.get(config, [])), f"{len(seeds)}: {seeds}" if seeds else "0", status])
    out += table(["configuration", "planned seeds", "done", "status"], rows)
    not_run = [label(c) for c in configs if c not in runs]
    out += ["", f"Not yet run: {', '.join(not_run)}." if not_run else "Every configuration has run."]

    out += ["", f"## The tutorial's claims: mixup (α={MAIN_ALPHA}) against the baseline, fp32, paired by seed", "",
            f"Seeds: baseline {base_n}, mixup {mix_n}. Difference = mixup - baseline.", ""]
    judged = claims(runs)
    for claim in dict.fromkeys(c for c, *_ in judged):
        by_verdict = {}
        for c, comp, m, p in judged:
            if c == claim:
                by_verdict.setdefault(verdict(p, m.better), []).append(short_claim(comp, m))
        out.append(f"- Mixup {claim}: " + "; ".join(f"**{v}** for {', '.join(names)}"
                                                   for v, names in by_verdict.items()) + ".")
    out += [""] + table(["claim", "comparison", "mixup - baseline [95% CI]", "verdict"],
                        [[c, comp, fmt_paired(p), f"**{verdict(p, m.better)}**"] for c, comp, m, p in judged])

    out += ["", "## Every metric, per configuration (mean ± SD over seeds)", ""]
    shown = [c for c in in_order(list(configs) + list(runs)) if c in runs]
    out += table(["metric", *[label(c) for c in shown]],
                 [[m.label, *[fmt_spread(spread(series(runs, c, m.key).values())) for c in shown]] for m in METRICS])

    out += ["", "## Mixup against the baseline, every metric (fp32, paired by seed)", ""]
    rows = []
    for m in METRICS:
        p = paired(series(runs, BASELINE, m.key), series(runs, MIXUP, m.key))
        rows.append([m.label, "higher" if m.better > 0 else "lower", fmt_paired(p),
                     "-" if p.low is None else "yes" if excludes_zero(p) else "no", verdict(p, m.better)])
    out += table(["metric", "better", "mixup - baseline [95% CI]", "excludes 0", "for mixup"], rows)

    means, best, against = alpha_comparison(runs, alphas)
    out += ["", "## Alpha (mixup, fp32)", "",
            "Every metric against alpha: the mixup columns of the table above; final accuracy:", ""]
    out += table(["alpha", "final eval accuracy", "this alpha - alpha 1.0 (paired by seed) [95% CI]",
                  "distinguishable from 1.0"],
                 [[a, fmt_spread(means[a]), *(["-", "-"] if a == MAIN_ALPHA else
                                             [fmt_paired(against[a]), distinguishable(against[a])])]
                  for a in alphas])
    if best is None:
        out += ["", "No mixup fp32 run yet: no best alpha."]
    elif best == MAIN_ALPHA:
        out += ["", f"Best alpha on mean final accuracy: {best} itself ({fmt_spread(means[best])})."]
    else:
        out += ["", f"Best alpha on mean final accuracy: **{best}** ({fmt_spread(means[best])}); against alpha "
                f"{MAIN_ALPHA}, paired by seed: {fmt_paired(against[best])}: **{distinguishable(against[best])}**."]

    out += ["", "## bf16 against fp32 (paired by seed)", "",
            "Within seed noise by two criteria: (a) the 95% interval of bf16 - fp32 contains 0; (b) |bf16 - fp32| "
            "is no larger than the seed-to-seed SD of the fp32 runs (all fp32 seeds of that variant)."]
    for fp32, bf16 in ((BASELINE, BASELINE_BF16), (MIXUP, MIXUP_BF16)):
        out += ["", f"### {label(bf16)} against {label(fp32)}", ""]
        rows = bf16_rows(runs, fp32, bf16)
        out += [noise_summary(rows), ""]
        out += table(["metric", "fp32 (paired seeds)", "bf16", "bf16 - fp32 [95% CI]", "(a) CI contains 0",
                      "fp32 seed SD", "(b) within the SD"], rows)
    out += ["", "Speed, on the seeds both precisions have (ratio = bf16 / fp32; > 1 for examples/s is faster):", ""]
    out += table(["variant", "fp32 train s", "bf16 train s", "time ratio", "fp32 examples/s", "bf16 examples/s",
                  "throughput ratio"], speed_rows(runs))
    out += ["", "Caveat: these timings were taken on a shared 2-core CPU machine while other work ran on it; "
            "they say little about bf16's speed. The clean speed figure is the benchmark's (`bench/`, README)."]

    out += ["", "## Provenance", "", *provenance(runs), "", "## FastEstimator's logged numbers (for reference)", "",
            "One run each, on the official CIFAR-10 files, in TensorFlow; our runs' data is named by its md5 "
            "above (the README says where it comes from).", ""]
    out += table(["variant", "peak eval accuracy", "final eval accuracy", "second run: peak", "second run: final"],
                 [list(r) for r in FASTESTIMATOR])
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- figure

def seed_offset(seed):
    return -0.2 + 0.07 * seed


def config_panel(ax, runs, configs, key, title):
    """Every seed a dot, mean ± SD beside them, one slot per planned configuration."""
    m = BY_KEY[key] if key in BY_KEY else None
    for i, config in enumerate(configs):
        values = series(runs, config, key)
        color = COLORS[config.variant]
        if not values:
            ax.text(i, 0.5, "not yet run", transform=ax.get_xaxis_transform(), ha="center", va="center",
                    rotation=90, color="0.5", fontsize=9)
            continue
        ax.scatter([i + seed_offset(s) for s in values], list(values.values()), s=22, color=color, alpha=0.55,
                   edgecolors="none", zorder=3)
        s = spread(values.values())
        ax.errorbar(i + 0.25, s.mean, yerr=s.sd or 0, fmt="D", ms=6, color=color, mec="black", mew=0.6,
                    capsize=4, zorder=4)
    ax.set_xticks(range(len(configs)),
                  [f"{label(c, short=True).replace(' α', chr(10) + 'α').replace(' bf16', chr(10) + 'bf16')}"
                   f"\nn={len(runs.get(c, {}))}" for c in configs], fontsize=8)
    ax.set_xlim(-0.6, len(configs) - 0.4)
    bf16 = [i for i, c in enumerate(configs) if c.precision == "bf16"]
    if bf16:
        ax.axvspan(min(bf16) - 0.5, max(bf16) + 0.5, color="0.93", zorder=0)
    arrow = "" if m is None else " (↑ better)" if m.better > 0 else " (↓ better)"
    style(ax, title + arrow, "", "")


def fgsm_panel(ax, runs):
    eps = [float(e.split("/")[0]) for e in EPSILONS]
    for config, weights, ls, name in ((BASELINE, "final", "-", "final"), (BASELINE, "best", "--", "lowest-loss"),
                                      (MIXUP, "final", "-", "final"), (MIXUP, "best", "--", "lowest-loss")):
        points = [series(runs, config, f"fgsm_{weights}_{e}") for e in EPSILONS]
        if not points[0]:
            continue
        color, shift = COLORS[config.variant], (0.96 if config.variant == "baseline" else 1.04)
        for x, values in zip(eps, points, strict=True):
            ax.scatter([x * shift] * len(values), list(values.values()), s=12, color=color, alpha=0.4, zorder=3)
        stats = [spread(v.values()) for v in points]
        ax.errorbar([x * shift for x in eps], [s.mean for s in stats], yerr=[s.sd or 0 for s in stats], ls=ls,
                    marker="o", ms=4, color=color, capsize=3, mfc=color if weights == "final" else "white",
                    label=f"{label(config, short=True)}, {name} weights (n={stats[0].n})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(eps, EPSILONS)
    style(ax, "FGSM accuracy against ε (fp32, α=1.0) (↑ better)", "ε", "accuracy")
    ax.legend(frameon=False, fontsize=8, loc="upper right")


def forest_panel(ax, rows, title, xlabel, colors):
    """One row per comparison: the mean difference and its 95% interval; a 0 line."""
    for y, (_, p, kind) in enumerate(rows):
        if p.n == 0:
            ax.text(0.5, y, "not yet run", transform=ax.get_yaxis_transform(), ha="center", va="center",
                    fontsize=8, color="0.5")
            continue
        color = colors[kind]
        if p.low is not None:
            ax.plot([p.low, p.high], [y, y], color=color, lw=2.2, solid_capstyle="butt")
        ax.plot(p.mean, y, "o", color=color, mec="black", mew=0.5, ms=6)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{name} (n={p.n})" for name, p, _ in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    style(ax, title, xlabel, "")


def mixup_forest(ax, runs):
    rows = []
    for _, comparison, m, p in claims(runs):
        if m.key == "final_loss":
            continue  # in loss units, an order of magnitude apart from the rest: in the table only
        name = short_claim(comparison, m) + (" ↑" if m.better > 0 else " ↓")
        rows.append((name, p, verdict(p, m.better).split(" (")[0]))
    colors = {"supported": COLORS["mixup"], "contradicted": COLORS["baseline"], "not shown": "0.55",
              "not yet run": "0.55"}
    forest_panel(ax, rows, f"Mixup (α={MAIN_ALPHA}) − baseline, paired by seed, 95% CI", "difference", colors)
    for kind, color in (("supported", colors["supported"]), ("contradicted", colors["contradicted"]),
                        ("not shown", colors["not shown"])):
        ax.plot([], [], "o", color=color, label=kind)
    ax.legend(frameon=False, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)


def bf16_forest(ax, runs):
    rows = []
    for fp32, bf16 in ((BASELINE, BASELINE_BF16), (MIXUP, MIXUP_BF16)):
        for key in ("peak_acc", "final_acc", "gap", "ece_final", "fgsm_final_1/255"):
            p = paired(series(runs, fp32, key), series(runs, bf16, key))
            rows.append((f"{fp32.variant}: {BY_KEY[key].short}", p, fp32.variant))
    # No speed ratio here: the study's timings come from a shared machine (report.md says so); the
    # benchmark's ratio is the one to quote.
    forest_panel(ax, rows, "bf16 − fp32, paired by seed, 95% CI", "difference", COLORS)


def alpha_panel(ax, runs, alphas):
    for a in alphas:
        values = series(runs, Config("mixup", a, "fp32"), "final_acc")
        ax.scatter([a * (1 + 0.03 * (s - 2)) for s in values], list(values.values()), s=20,
                   color=COLORS["mixup"], alpha=0.55, edgecolors="none", zorder=3)
        s = spread(values.values())
        ax.annotate(f"n={s.n}" if s.n else "not yet run", (a, 0), xycoords=("data", "axes fraction"),
                    xytext=(0, 4), textcoords="offset points", ha="center", fontsize=8)
        if s.n:
            ax.errorbar(a * 1.12, s.mean, yerr=s.sd or 0, fmt="D", ms=6, color=COLORS["mixup"], mec="black",
                        mew=0.6, capsize=4, zorder=4)
    base = spread(series(runs, BASELINE, "final_acc").values())
    if base.n:
        ax.axhline(base.mean, color=COLORS["baseline"], lw=1.5, label=f"baseline fp32, mean ± SD (n={base.n})")
        if base.sd:
            ax.axhspan(base.mean - base.sd, base.mean + base.sd, color=COLORS["baseline"], alpha=0.12)
        ax.legend(frameon=False, fontsize=8, loc="upper left")
    ax.set_xscale("log")
    ax.set_xticks(alphas, [str(a) for a in alphas])
    ax.set_xlim(min(alphas) / 1.4, max(alphas) * 1.4)
    ax.minorticks_off()
    style(ax, "Final eval accuracy against mixup's α (fp32) (↑ better)", "α", "accuracy")


def figure(runs, configs, alphas):
    fig, axes = plt.subplots(3, 3, figsize=(18, 15), constrained_layout=True)
    for ax, (key, title) in zip(axes[0], (("peak_acc", "Peak eval accuracy"), ("final_acc", "Final eval accuracy"),
                                          ("final_loss", "Final eval loss")), strict=True):
        config_panel(ax, runs, configs, key, title)
    config_panel(axes[1, 0], runs, configs, "gap", "Generalization gap (train − eval accuracy)")
    config_panel(axes[1, 1], runs, configs, "ece_final", "ECE, final weights")
    fgsm_panel(axes[1, 2], runs)
    mixup_forest(axes[2, 0], runs)
    alpha_panel(axes[2, 1], runs, alphas)
    bf16_forest(axes[2, 2], runs)
    total = sum(len(s) for s in runs.values())
    fig.suptitle(f"Mixup study, {plural(total, 'run')}: every seed a dot, ◆ mean ± SD (n under each configuration); "
                 "grey: bf16", fontweight="bold", fontsize=13)
    return fig


# ---------------------------------------------------------------- entry point

def report(runs_dir, out_dir):
    """Read the runs, write out_dir/report.md and out_dir/report.png; returns the Markdown."""
    runs = load_runs(Path(runs_dir))
    configs = planned_configs()
    ordered = in_order(list(configs) + list(runs))
    alphas = sorted({c.alpha for c in ordered if c.variant == "mixup" and c.precision == "fp32"})
    text = markdown(runs, configs, alphas)
    fig = figure(runs, ordered, alphas)
    with atomic_output(Path(out_dir) / "report.png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    with atomic_output(Path(out_dir) / "report.md") as tmp:
        tmp.write_text(text)
    return text


def main(argv=None):
    """argv: the arguments after `report` (default: the command line's, a leading `report` dropped)."""
    if argv is None:
        argv = sys.argv[1:]
        argv = argv[1:] if argv[:1] == ["report"] else argv
    parser = argparse.ArgumentParser(prog="python -m tools.study report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=RUNS, help="the run folders (default study/runs)")
    parser.add_argument("--out", type=Path, default=OUT, help="where report.md and report.png go (default study)")
    args = parser.parse_args(argv)

    def go():
        text = report(args.runs, args.out)
        print(text + f"wrote {args.out / 'report.md'} and {args.out / 'report.png'}")
    run(go)


if __name__ == "__main__":
    main()
