"""One report for any sweep or study: every metric over seeds, comparisons paired by seed, claims judged.

    python -m tools.report [--json FILE | --archive DIR] [--claims FILE] [--reference KEY=VALUE ...]
                           [--absent KEY=VALUE ...] [--variant NAME] [--out DIR]

It reads the experiments of HEAD (`dvc exp show --json`, or a saved copy) or an archive folder
(tools/runs.py), writes <out>/report.md and <out>/report.png (default reports/), prints the Markdown.

Configurations: the results grouped by variant and by the params that vary among them, less the seed,
which pairs them. A run's variants are those whose metrics it holds, whatever their names. A variant's
results depend only on the params of the stages that write its metrics and of those upstream (dvc.yaml
as DVC resolves it for the variants): the baseline of runs that differ only in mixup params, or only in
the variants they list, is one computation (DVC restores it from its run-cache), counted once per seed.
A param a run lacks reads as null, so runs from before and after it was added never pool (--absent
KEY=VALUE: what they had). HEAD's own row counts only where its params are a point of the experiments'
grid, and then once. Colours: plotting.colors, in the order of the runs' `variants` lists.
Per configuration, every metric of the claims file: mean ± SD (n). Against each reference (--reference;
default variant=baseline, else the smallest value of the x axis' param): each configuration minus itself
at the reference's value, paired by seed, with its 95% t-interval (tools/stats.py); the claims likewise.
"""
import argparse
import math
import re
from collections import Counter, namedtuple
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lenet_mixup import variant  # noqa: E402
from lenet_mixup.params import VARIANTS, read_yaml  # noqa: E402
from lenet_mixup.plotting import colors, style  # noqa: E402
from lenet_mixup.stage import UserError, atomic_output, run  # noqa: E402
from tools import runs, stats  # noqa: E402

SEED = "train.seed"
CLAIMS = Path("study/claims.yaml")
Metric = namedtuple("Metric", "name at better")  # at: ("evaluation", "final", "ece"); better: +1 higher, -1 lower
Claim = namedtuple("Claim", "text metric against_metric configuration against")
Config = namedtuple("Config", "variant params")  # params: ((key, value), ...), every param it depends on but the seed
DASHES = ("-", "--", ":", "-.")  # the lines of one variant, by the other swept params' values
VERDICT_COLORS = {"supported": "#2ca02c", "contradicted": "#d62728", "not shown": "0.55"}


def freeze(value):
    """A param value as a hashable that compares as the value does (lists become tuples)."""
    return tuple(freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


def plain(value):
    """A param value as params.yaml writes it: 0.2, null, fp32, [1, 2]."""
    if value is None:
        return "null"
    return "[" + ", ".join(map(plain, value)) + "]" if isinstance(value, tuple) else str(value)


def order(value, first=()):
    """Sort key for param values of mixed types: null, numbers ascending, then text, values in `first`
    (a reference's) before the others."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return (value is not None, not number, not number and value not in first, value if number else plain(value))


# ---------------------------------------------------------------- claims file and options

def read_claims(path):
    """(metrics, claims) of a claims file (study/claims.yaml says its format); a mistake is one line."""
    def need(ok, what):
        if not ok:
            raise UserError(f"claims file {path}: {what} (see study/claims.yaml)")
    try:
        data = read_yaml(Path(path).read_text())
    except OSError as e:
        raise UserError(f"claims file {path}: {e.strerror} (pass --claims FILE)") from None
    except Exception as e:  # ruamel's parse errors: their last line says where
        raise UserError(f"claims file {path}: not YAML ({runs.last_line(str(e))})") from None
    need(isinstance(data, dict) and isinstance(data.get("metrics"), list), "needs a list `metrics:`")
    metrics = {}
    for i, m in enumerate(data["metrics"], 1):
        need(isinstance(m, dict) and all(isinstance(m.get(k), str) for k in ("name", "at"))
             and m.get("better") in ("higher", "lower"), f"metric {i} needs a name, at (e.g. "
             "summary.final_eval_acc) and better (higher or lower)")
        at = tuple(m["at"].split("."))
        need(at[0] in runs.READ and len(at) > 1, f"metric {m['name']!r}: at starts with summary. or evaluation.")
        metrics[m["name"]] = Metric(m["name"], at, 1 if m["better"] == "higher" else -1)
    claims = []
    for i, c in enumerate(data.get("claims") or [], 1):
        need(isinstance(c, dict) and isinstance(c.get("claim"), str) and all(
            isinstance(c.get(k), dict) for k in ("configuration", "against")),
            f"claim {i} needs claim, metric, configuration and against (the last two mappings)")
        for key in ("metric", "against_metric"):
            need(c.get(key, c.get("metric")) in metrics, f"claim {i}: {key} {c.get(key)!r} is none of the metrics")
        claims.append(Claim(c["claim"], metrics[c["metric"]], metrics[c.get("against_metric", c["metric"])],
                            c["configuration"], c["against"]))
    return list(metrics.values()), claims


def assignment(text, option):
    """KEY=VALUE, the value read as YAML (as params.yaml is): {key: value}."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"{option} {text}: expected KEY=VALUE, e.g. {option} mixup.alpha=1.0")
    return {key.strip(): read_yaml(value) if value.strip() else None}


# ---------------------------------------------------------------- the results, grouped

def variant_order(results):
    """The variants in the order of the runs' `variants` lists (the pipeline's colours follow it), then the
    reference, then any other (a run from before the list names none) by name."""
    listed = [v for r in results if isinstance(r.params.get(VARIANTS), list) for v in r.params[VARIANTS]]
    return list(dict.fromkeys([*listed, variant.REFERENCE, *sorted(r.variant for r in results)]))


def depends_on(variants):
    """{variant: the params its results depend on}: dvc.yaml's stages as DVC resolves them for this
    workspace's params.yaml listing `variants` (the results' own: a run may list others than HEAD)."""
    params = read_yaml(Path(runs.PARAMS_FILE).read_text()) if Path(runs.PARAMS_FILE).is_file() else None
    stages = runs.pipeline_stages(read_yaml(Path("dvc.yaml").read_text()), {**(params or {}), VARIANTS: variants})
    return runs.variant_params(stages)


class Study:
    """The results grouped into configurations, each {seed: result}, each computation once."""

    def __init__(self, results, depends_on):
        self.keys = list(dict.fromkeys(k for r in results for k in r.params))
        self.depends_on = depends_on
        self.variants = variant_order(results)
        self.colors = colors(self.variants)
        self.first = {}  # {key: [value]}: the references' values, shown before the others
        self.groups, self.merged = {}, 0
        for r in results:
            seeds = self.groups.setdefault(self.config(r.variant, r.params), {})
            if r.params.get(SEED) in seeds:
                self.merged += 1  # the same variant with the same params: the same computation
            else:
                seeds[r.params.get(SEED)] = r
        # Swept: a param with more than one value among the configurations. One that no variant's results
        # depend on (`variants`, which only compare reads) is no configuration's, and none of these.
        values = {k: {v for c in self.groups for key, v in c.params if key == k} for k in self.keys}
        self.varying = [k for k in self.keys if len(values[k]) > 1 and k != SEED]

    def config(self, variant, params):
        keys = [k for k in self.keys if k != SEED and runs.depends(k, self.depends_on.get(variant, ()))]
        return Config(variant, tuple((k, freeze(params.get(k))) for k in keys))

    def x_key(self):
        """The swept param with the most values: the figure's x axis."""
        return max(self.varying, key=lambda k: len(self.values(k)), default=None)

    def values(self, key):
        """The values of `key` among the configurations, in order."""
        found = {v for c in self.groups for k, v in c.params if k == key}
        return sorted(found, key=lambda v: order(v, self.first.get(key, ())))

    def ordered(self):
        """The configurations: by variant (variant_order), then by the swept params' values."""
        return sorted(self.groups, key=lambda c: (self.variants.index(c.variant), [
            order(v, self.first.get(k, ())) for k, v in c.params if k in self.varying]))

    def label(self, config, omit=()):
        """'mixup alpha=0.2 precision=bf16': the variant and the swept params it depends on, less `omit`."""
        short = [k.rsplit(".", 1)[-1] for k in self.varying]
        names = dict(zip(self.varying, short if len(set(short)) == len(short) else self.varying, strict=True))
        return " ".join([config.variant] + [f"{names[k]}={plain(v)}" for k, v in config.params
                                             if k in self.varying and k not in omit])

    def matches(self, config, selector):
        params = dict(config.params)
        return all(config.variant == v if k == "variant" else params.get(k, ...) == freeze(v)
                   for k, v in selector.items())

    def reference(self, config, against):
        """The configuration `config` is compared with: itself with `against`'s values; None if none ran, or
        if several did (another variant's own params, which `config` does not fix, differ among them)."""
        params = dict(config.params) | {k: freeze(v) for k, v in against.items() if k != "variant"}
        found = [c for c in self.groups if c.variant == against.get("variant", config.variant) and c != config
                 and all(params.get(k, v) == v for k, v in c.params)]
        return found[0] if len(found) == 1 else None

    def check(self, selector, where):
        known = list(dict.fromkeys([*self.variants, *variant.available()]))  # the results' and the modules'
        if "variant" in selector and selector["variant"] not in known:
            raise UserError(f"{where}: variant {selector['variant']!r}: the variants are {', '.join(known)}")
        if "variant" in selector and selector["variant"] not in self.variants:
            return  # no results of it here: the claim has no rows, whatever params it names
        unknown = [k for k in selector if k != "variant" and k not in self.keys]
        if unknown:
            raise UserError(f"{where}: no run has the param {', '.join(unknown)}; params: {', '.join(self.keys)}")

    def series(self, config, metric):
        """{seed: value} of one metric in one configuration; a result without the metric is left out."""
        found = {}
        for seed, r in sorted(self.groups[config].items(), key=lambda item: order(item[0])):
            node = r.files.get(metric.at[0])
            for key in metric.at[1:]:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, (int, float)) and not isinstance(node, bool) and math.isfinite(node):
                found[seed] = float(node)
        return found


def counted(experiments, heads):
    """The experiments' results, and HEAD's where its params are a point of their grid (each of its
    values one the experiments have); returns (results, whether HEAD counts)."""
    keys = {k for r in experiments + heads for k in r.params}
    values = {k: {freeze(r.params.get(k)) for r in experiments} for k in keys}
    grid_point = bool(experiments) and bool(heads) and all(
        freeze(heads[0].params.get(k)) in values[k] for k in keys)
    return experiments + (heads if grid_point else []), grid_point


# ---------------------------------------------------------------- Markdown

def fmt_spread(s):
    if s.n == 0:
        return "no runs"
    return f"{s.mean:.4f} (n=1)" if s.n == 1 else f"{s.mean:.4f} ± {s.sd:.4f} (n={s.n})"


def fmt_paired(p):
    if p.n == 0:
        return "no paired seeds"
    if p.low is None:
        return f"{p.mean:+.4f} (n=1: no interval)"
    return f"{p.mean:+.4f} [{p.low:+.4f}, {p.high:+.4f}] (n={p.n})"


def table(header, rows):
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def judged(study, claims):
    """(claim, configuration, reference, paired difference, verdict) for every configuration a claim is about."""
    rows = []
    for claim in claims:
        for config in study.ordered():
            ref = study.reference(config, claim.against) if study.matches(config, claim.configuration) else None
            if ref is not None:
                p = stats.paired(study.series(ref, claim.against_metric), study.series(config, claim.metric))
                rows.append((claim, config, ref, p, stats.verdict(p, claim.metric.better)))
    return rows


def markdown(study, source, metrics, claims_file, claim_rows, references, absent):
    seeds = sorted({s for g in study.groups.values() for s in g}, key=order)
    total = sum(len(g) for g in study.groups.values())
    configs = study.ordered()
    swept = ", ".join(f"`{k}` ({', '.join(plain(v) for v in study.values(k))})"
                      for k in study.varying) or "nothing but the seed"
    out = ["# Report", "", source, "",
           f"{total} results in {len(configs)} configurations; seeds (`{SEED}`): {', '.join(map(plain, seeds))}. "
           f"Swept: {swept}."]
    if absent:
        out[-1] += " A param a run lacks reads as: " + ", ".join(f"`{k}`={plain(freeze(v))}" for k, v in absent.items())
        out[-1] += " (--absent)."
    if study.merged:
        out[-1] += (f" {study.merged} more results were the same computation as one of these (the same variant and "
                    "the same params it depends on, e.g. the baseline of runs that differ only in mixup params): "
                    "each counts once.")
    out += ["", "Each number is over seeds: mean ± sample SD (n). A difference is paired by seed: mean "
            "[95% t-interval, mean ± t(0.975, n-1)·SD/√n] (n pairs). No SD and no interval for n < 2. A claim is "
            "**supported** when the interval excludes 0 on the side it predicts, **contradicted** when it excludes "
            "0 on the other side, **not shown** when it contains 0 or n < 2.", "",
            "![every seed a dot, mean ± SD per configuration; the claims' differences](report.png)", "",
            "## Configurations", ""]
    out += table(["configuration", "seeds"], [[study.label(c), f"{len(study.groups[c])}: " + ", ".join(
        plain(s) for s in sorted(study.groups[c], key=order))] for c in configs])

    out += ["", f"## Claims (`{claims_file}`)", ""]
    out += table(["claim", "metric", "configuration - reference", "difference [95% CI]", "verdict"],
                 [[claim.text, claim.metric.name if claim.metric == claim.against_metric else
                   f"{claim.metric.name} - reference's {claim.against_metric.name}",
                   f"{study.label(config)} - {study.label(ref)}", fmt_paired(p),
                   f"**{verdict}**" if verdict != "not shown" else verdict]
                  for claim, config, ref, p, verdict in claim_rows]) if claim_rows else \
        ["No claim is about a configuration (and its reference) that ran."]

    out += ["", "## Every metric, per configuration: mean ± SD (n)", ""]
    out += table(["metric", "better", *map(study.label, configs)],
                 [[m.name, "higher" if m.better > 0 else "lower",
                   *(fmt_spread(stats.spread(study.series(c, m).values())) for c in configs)] for m in metrics])

    for ref in references:
        name = " ".join(f"{k}={plain(freeze(v))}" for k, v in ref.items())
        pairs = [(c, r) for c in configs if (r := study.reference(c, ref)) is not None]
        out += ["", f"## Against `{name}`, paired by seed: configuration - reference [95% CI]", ""]
        out += table(["metric", *(f"{study.label(c)} - {study.label(r)}" for c, r in pairs)],
                     [[m.name, *(fmt_paired(stats.paired(study.series(r, m), study.series(c, m))) for c, r in pairs)]
                      for m in metrics]) if pairs else ["No configuration has a reference that ran."]
    return out


def provenance(results):
    """Per run: where and how it ran, as far as its run.json (or DVC) says."""
    by_run = {r.run: r.info for r in results}
    lines = ["", "## Provenance", ""]
    for key in ("code_commit", "host", "threads", "torch", "prepared_md5"):
        counts = Counter(str(info[key]) for info in by_run.values() if key in info)
        if counts:
            lines.append(f"- {key}: " + "; ".join(f"`{v}` ({n} run{'s' * (n > 1)})" for v, n in sorted(counts.items())))
    return lines


# ---------------------------------------------------------------- figure

def figure(study, metrics, claim_rows):
    """A panel per metric: the first swept param with the most values on x, its values as plain labels;
    one line per variant and value of the other swept params; every seed a dot, mean ± SD with its n.
    A configuration that does not depend on the x param (the baseline against alpha) is a level line.
    Last, the claims: each difference and its interval, as a share of the reference's mean."""
    x_key = study.x_key()
    # Nothing swept but the seed: the configurations side by side, each at its own x.
    xs = study.values(x_key) if x_key else [study.label(c) for c in study.ordered()]
    lines = {}  # (variant, other swept values) -> [configurations]
    for c in study.ordered():
        lines.setdefault((c.variant, tuple((k, v) for k, v in c.params if k in study.varying and k != x_key)),
                         []).append(c)
    cols = min(4, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    forest = 0.3 * len(claim_rows) + 1.2 if claim_rows else 0
    fig = plt.figure(figsize=(5 * cols, 3.6 * rows + forest + 0.6), layout="constrained")
    # Two subfigures, each laid out alone: the claims' long labels do not squeeze the panels.
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.6 * rows + 0.6, forest or 1e-6])
    for i, metric in enumerate(metrics):
        ax = top.add_subplot(rows, cols, i + 1)
        for j, (line, configs) in enumerate(lines.items()):
            dash = DASHES[sum(other[0] == line[0] for other in list(lines)[:j]) % len(DASHES)]
            draw_line(ax, study, configs, metric, xs, x_key, dash, 0.12 * (j - (len(lines) - 1) / 2))
        ax.set_xticks(range(len(xs)), [plain(x) for x in xs])
        ax.set_xlim(-0.6, len(xs) - 0.4)
        style(ax, f"{metric.name} {'↑' if metric.better > 0 else '↓'}", x_key or "", "")
    handles, labels = top.axes[0].get_legend_handles_labels()
    top.legend(handles, labels, loc="outside upper center", ncols=min(4, len(labels)), frameon=False,
               title="every seed a dot, ◆ mean ± SD (n beside it); ↑ higher is better, ↓ lower")
    if forest:
        claims_panel(bottom.add_subplot(), study, claim_rows)
    return fig


def draw_line(ax, study, configs, metric, xs, x_key, dash, offset):
    color = study.colors[configs[0].variant]
    label = study.label(configs[0], omit=(x_key,))
    if x_key and x_key not in dict(configs[0].params):  # does not depend on x: a level line, its SD a band
        s = stats.spread(study.series(configs[0], metric).values())
        if s.n:
            ax.axhline(s.mean, color=color, ls=dash, lw=1.5, label=f"{label} (n={s.n})")
            if s.sd:
                ax.axhspan(s.mean - s.sd, s.mean + s.sd, color=color, alpha=0.1, lw=0)
        return
    means = []
    for c in configs:
        values = study.series(c, metric)
        x = xs.index(dict(c.params)[x_key]) + offset if x_key else xs.index(study.label(c))
        ax.scatter([x - 0.04 + 0.08 * k / max(1, len(values) - 1) for k in range(len(values))], list(values.values()),
                   s=10, color=color, alpha=0.45, edgecolors="none", zorder=3)
        s = stats.spread(values.values())
        if s.n:
            ax.errorbar(x, s.mean, yerr=s.sd or 0, fmt="D", ms=5, color=color, mec="black", mew=0.5, capsize=3,
                        zorder=4)
            ax.annotate(f"n={s.n}", (x, s.mean), xytext=(5, -9), textcoords="offset points", fontsize=7, color="0.3")
            means.append((x, s.mean))
    if means:
        ax.plot(*zip(*means, strict=True), color=color, ls=dash, lw=1.2, label=label)


def claims_panel(ax, study, claim_rows):
    for y, (claim, _, ref, p, verdict) in enumerate(claim_rows):
        base = stats.spread(study.series(ref, claim.against_metric).values()).mean
        scale = 100 / abs(base) if base else 1.0
        color = VERDICT_COLORS[verdict]
        if p.low is not None:
            ax.plot([p.low * scale, p.high * scale], [y, y], color=color, lw=2.2, solid_capstyle="butt")
        if p.n:
            ax.plot(p.mean * scale, y, "o", color=color, mec="black", mew=0.5, ms=5)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(claim_rows)), [
        f"{claim.metric.name}{' vs ' + claim.against_metric.name if claim.against_metric != claim.metric else ''}: "
        f"{study.label(config)} - {study.label(ref)} (n={p.n})" for claim, config, ref, p, _ in claim_rows], fontsize=8)
    ax.set_ylim(len(claim_rows) - 0.5, -0.5)
    for verdict, color in VERDICT_COLORS.items():
        ax.plot([], [], "o", color=color, label=verdict)
    ax.legend(frameon=False, fontsize=8, loc="lower right", bbox_to_anchor=(1, 1), ncols=3)
    style(ax, "The claims: configuration - reference, paired by seed, 95% CI", "difference, % of the reference's mean",
          "")


# ---------------------------------------------------------------- entry point

def load(saved_json=None, archive=None, absent=None, variants=None):
    """(results, a line saying where they come from): an archive's, or the experiments of HEAD's (and
    HEAD's own where it is a point of their grid); a param a run lacks set from `absent`."""
    def fill(results):
        for r in results:
            for key, value in (absent or {}).items():
                r.params.setdefault(key, value)
        return [r for r in results if not variants or r.variant in variants]

    def check(results):
        unknown = sorted(set(variants or ()) - {r.variant for r in results})
        if unknown:
            raise UserError(f"--variant {', '.join(unknown)}: no run has results of it; the runs' variants: "
                            f"{', '.join(sorted({r.variant for r in results})) or 'none'}")
    if archive:
        found = runs.read_archive(archive)
        check(found)
        return fill(found), f"Source: the archive `{archive}`."
    experiments, heads = runs.read_experiments(runs.shown_experiments(saved_json))
    check(experiments + heads)
    results, at_head = counted(fill(experiments), fill(heads))
    commit = heads[0].info["code_commit"][:7] if heads else "HEAD"
    return results, (f"Source: {f'`{saved_json}`, a saved' if saved_json else 'the'} `dvc exp show --json`: the "
                     f"experiments of `{commit}`; its own row (HEAD) " +
                     ("is a point of their grid: counted, once." if at_head else
                      "is not a point of their grid: not counted."))


def report(results, source, claims_file=CLAIMS, references=(), absent=None, out=Path("reports")):
    """Group the results, write out/report.md and out/report.png; returns the Markdown."""
    if not results:
        raise UserError("no finished runs to report: run a sweep first (`python -m tools.sweep -S ...`)")
    if not Path("dvc.yaml").is_file():
        raise UserError("no dvc.yaml here: run the report from the project's root")
    metrics, claims = read_claims(claims_file)
    study = Study(results, depends_on(sorted({r.variant for r in results})))
    if not references and any(c.variant == variant.REFERENCE for c in study.groups):
        references = [{"variant": variant.REFERENCE}]
    elif not references and study.x_key():
        references = [{study.x_key(): study.values(study.x_key())[0]}]
    for ref in references:
        study.check(ref, "--reference " + " ".join(ref))
    study.first = {k: [freeze(v)] for ref in references for k, v in ref.items()}
    for claim in claims:
        for selector in (claim.configuration, claim.against):
            study.check(selector, f"{claims_file}: claim {claim.text!r}")
    claim_rows = judged(study, claims)
    text = "\n".join(markdown(study, source, metrics, claims_file, claim_rows, references, absent or {})
                     + provenance([r for g in study.groups.values() for r in g.values()])) + "\n"
    fig = figure(study, metrics, claim_rows)
    with atomic_output(Path(out) / "report.png") as tmp:
        fig.savefig(tmp, dpi=80, format="png", metadata={"Software": None})
    plt.close(fig)
    with atomic_output(Path(out) / "report.md") as tmp:
        tmp.write_text(text)
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--json", type=Path, help="a saved `dvc exp show --json` output (default: run it)")
    source.add_argument("--archive", type=Path, help="an archive folder (tools.export, tools.sweep --archive)")
    parser.add_argument("--claims", type=Path, default=CLAIMS, help=f"metrics and claims (default {CLAIMS})")
    parser.add_argument("--reference", action="append", default=[], metavar="KEY=VALUE",
                        help="compare each configuration with itself at this value (repeatable; default "
                             "variant=baseline, else the swept param's smallest value)")
    parser.add_argument("--absent", action="append", default=[], metavar="KEY=VALUE",
                        help="the value of a param in the runs that lack it (default: null, a value of its own)")
    parser.add_argument("--variant", action="append", metavar="NAME", help="only this variant's results "
                                                                          "(repeatable)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="where report.md and report.png go "
                                                                          "(default reports)")
    args = parser.parse_args()
    references = [assignment(text, "--reference") for text in args.reference]
    absent = {k: v for text in args.absent for k, v in assignment(text, "--absent").items()}
    results, source = load(args.json, args.archive, absent, args.variant)
    text = report(results, source, args.claims, references, absent, args.out)
    print(summary(text) + f"The full report, every metric per configuration and the paired differences: "
          f"{args.out / 'report.md'} (and {args.out / 'report.png'})")


def summary(text):
    """What the terminal shows of a report: what it rests on, and the claims' verdicts."""
    sections = re.split(r"(?m)^(?=## )", text)
    intro = [line for line in sections[0].splitlines() if line.startswith(("Source:", "#")) or "results in" in line]
    claims = [s for s in sections if s.startswith("## Claims")]
    return "\n".join(intro) + "\n\n" + "".join(claims)


if __name__ == "__main__":
    run(main)
