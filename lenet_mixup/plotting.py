"""How every picture of the project looks: one colour per variant, one axes style.

A variant's colour is given by its place in params.yaml's `variants` list, so any number of variants
get colours of their own; the baseline, listed first, is blue. The `dvc plots` charts take the same
colours from the `color` column the compare stage writes beside each row (.dvc/plots/variants.json).
"""
PALETTE = ["#1f77b4", "#e6550d", "#31a354", "#756bb1", "#d62728", "#17becf", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22"]


def colors(variants):
    """{variant: colour}, in the order given; past ten variants the colours repeat."""
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(variants)}


def style(ax, title, xlabel, ylabel):
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
