"""`dvc plots show` without internet: the page, opened in headless Chromium, draws every plot DVC lists.

DVC's default page loads vega from a CDN and stays blank offline; the committed .dvc/config points
plots.html_template at data/plots-offline.html, which stage `plots_page` writes with the libraries
inline. Chromium runs with every network request failing (an unreachable proxy, and no host resolving).
CI sets REQUIRE_BROWSER=1: there a missing Chromium fails the test instead of skipping it.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from configobj import ConfigObj

from lenet_mixup.paths import PLOTS_PAGE
from lenet_mixup.plotting import colors
from lenet_mixup.stage import UserError
from stages import plots_page
from tests.helpers import ROOT, dvc_env

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, every request fails at once
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
    f"--proxy-server={DEAD_PROXY}", "--host-resolver-rules=MAP * ~NOTFOUND",  # the network is unreachable
    "--hide-scrollbars", "--virtual-time-budget=15000",  # let vega-embed render before the dump
]
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
VARIANTS = ["baseline", "mixup"]  # the default pipeline's
REMOTE_RESOURCE = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//", re.I)



@pytest.fixture
def browser():
    if not Path(CHROMIUM).is_file():
        why = f"no Chromium at {CHROMIUM}: apt-get install chromium to run the browser test"
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail(f"{why} (REQUIRE_BROWSER is set, as in CI)")
        pytest.skip(why)
    return CHROMIUM


def offline_env():
    """The stage environment with every proxy variable pointing at nothing: no request can leave."""
    env = dvc_env()
    for name in ("NO_PROXY", "no_proxy"):
        env.pop(name, None)
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        env[name] = env[name.upper()] = DEAD_PROXY
    return env


def plots_show(project, *args, check=True):
    result = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", *args], cwd=project.path,
                            env=offline_env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"dvc plots show failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def chromium(page, tmp_path, *args):
    """Run headless Chromium on `page` with a fresh profile; return its stdout."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    result = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"chromium failed ({result.returncode}):\n{result.stderr[-3000:]}"
    return result.stdout


class PlotDivs(HTMLParser):
    """For each element id in `ids`: the charts (svg/canvas with class `marks`), images, stroke colours and
    visible text inside."""

    def __init__(self, ids):
        super().__init__()
        self.ids = set(ids)
        self.stack = []  # (tag, plot id the element is inside, or None)
        self.charts = {i: [] for i in ids}
        self.images = {i: [] for i in ids}
        self.strokes = {i: set() for i in ids}
        self.text = {i: [] for i in ids}

    def plot(self):
        return self.stack[-1][1] if self.stack else None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        plot = attrs.get("id") if tag == "div" and attrs.get("id") in self.ids else self.plot()
        if plot is not None:
            if tag in ("svg", "canvas") and "marks" in (attrs.get("class") or "").split():
                self.charts[plot].append(tag)
            if tag == "img":
                self.images[plot].append(attrs.get("src"))
            if attrs.get("stroke"):
                self.strokes[plot].add(attrs["stroke"].lower())
        if tag not in VOID:
            self.stack.append((tag, plot))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        while self.stack:  # the serialized DOM is well formed; pop to the matching element
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        plot = self.plot()
        if plot is not None and not any(t in ("script", "style") for t, _ in self.stack):
            self.text[plot].append(data)


def listed_plots(project):
    """(HTML id of the plot's div, its properties, whether it is an image) for each plot DVC shows."""
    from dvc_render.base import Renderer
    shown = json.loads(project.dvc("plots", "show", "--json").stdout)["data"]
    for name, renderers in shown.items():
        for renderer in renderers:
            image = renderer["type"] == "image"
            props = {} if image else renderer["content"]
            yield Renderer.remove_special_chars(name), props, image


def test_plots_page_renders_offline(browser, finished_project, tmp_path):  # browser first: it may skip
    project = finished_project
    template_setting = ConfigObj(str(ROOT / ".dvc/config"))["plots"]["html_template"]
    assert template_setting == plots_page.CONFIG_VALUE, "the committed .dvc/config must name the template"
    assert (project.path / PLOTS_PAGE).is_file(), "the pipeline ran, so its page template is there"

    # With DVC's own page, which loads vega from a CDN, nothing draws offline (the reason for ours).
    project.dvc("config", "--unset", "plots.html_template")
    plots_show(project, "-o", "cdn_plots")
    project.run("git", "checkout", ".dvc/config")
    defs = list(listed_plots(project))
    vega_ids = [i for i, _, image in defs if not image]
    assert len(vega_ids) == 9, f"expected 5 comparisons, 2 live curves, 2 confusion matrices; DVC lists {vega_ids}"
    cdn = PlotDivs(vega_ids)
    cdn.feed(chromium(project.path / "cdn_plots/index.html", tmp_path, "--dump-dom"))
    assert not any(cdn.charts.values()), "the network is not blocked: the CDN page rendered"

    # As a user runs it: no set-up step, no option.
    plots_show(project)
    index = project.path / "dvc_plots/index.html"
    page = index.read_text(encoding="utf-8")
    assert not REMOTE_RESOURCE.findall(page), "the page loads something from the network"
    assert "vegaEmbed" in page

    dom = PlotDivs([i for i, _, _ in defs])
    dom.feed(chromium(index, tmp_path, "--dump-dom"))
    assert {i for i, _, image in defs if image} == {"results_comparison_png", "metrics_baseline_examples_png",
                                                     "metrics_mixup_examples_png"}
    for plot_id, spec, image in defs:
        assert plot_id in dom.charts, f"no <div id={plot_id!r}> in the page"
        if image:
            assert dom.images[plot_id], f"plot {plot_id}: no <img>"
            for src in dom.images[plot_id]:
                assert (index.parent / src).is_file(), f"plot {plot_id}: image {src} is missing"
            continue
        assert len(dom.charts[plot_id]) == 1, f"plot {plot_id} did not render (charts: {dom.charts[plot_id]})"
        assert dom.charts[plot_id] == ["svg"], f"plot {plot_id}: expected an SVG chart"
        text = " ".join(dom.text[plot_id])
        title = spec["title"]["text"] if isinstance(spec.get("title"), dict) else spec.get("title")
        assert title and title in text, f"plot {plot_id}: no title {title!r}"
        if not plot_id.startswith("metrics_"):  # a comparison: both variants, each in its own colour
            for variant in VARIANTS:
                assert variant in text, f"plot {plot_id}: no {variant} in its legend"
            assert {c.lower() for c in colors(VARIANTS).values()} <= dom.strokes[plot_id], \
                f"plot {plot_id}: the variants are not drawn in their colours ({dom.strokes[plot_id]})"

    screenshot = tmp_path / "plots.png"
    chromium(index, tmp_path, f"--screenshot={screenshot}", "--window-size=1400,3600")
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("PLOTS_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["PLOTS_SCREENSHOT"])


def test_the_variants_template_colours_each_variant_as_its_rows_say():
    """No variant is named in the template: the colour scale's range comes from the rows' `color` column,
    which stage compare writes beside each row's `variant` (vega-lite pairs the two in the order of the
    variant names, its default order for the domain too, so no `sort` may be set)."""
    color = json.loads((ROOT / ".dvc/plots/variants.json").read_text())["encoding"]["color"]
    assert color["field"] == "variant" and color["scale"] == {"range": {"field": "color"}} and "sort" not in color


def test_without_vl_convert_the_plots_page_stage_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "vl_convert", None)  # import fails, as where it is not installed
    with pytest.raises(UserError, match=r"vl-convert-python is not installed.*dvc repro plots_page"):
        plots_page.main()
    assert not (tmp_path / PLOTS_PAGE).exists()
