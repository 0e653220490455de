"""How every picture of the project looks: one colour per variant, one axes style.

The same colours are in .dvc/plots/variants.json, the template `dvc plots show` draws the
baseline-against-mixup plots with (tests/test_plots_template.py keeps the two in step).
"""
COLORS = {"baseline": "#1f77b4", "mixup": "#e6550d"}


def style(ax, title, xlabel, ylabel):
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
