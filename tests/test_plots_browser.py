"""`dvc plots show` without internet: the page, opened in headless Chromium, draws every plot in dvc.yaml.

DVC's default page loads vega from a CDN and stays blank offline; the committed .dvc/config points
plots.html_template at the template `python -m stages.plots_template` generates, with the libraries inline.
Chromium runs with every network request failing (an unreachable proxy, and no host resolving).
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from configobj import ConfigObj
from dvc_render.base import Renderer
from dvc_render.image import ImageRenderer

from stages import plots_template
from stages.paths import VARIANTS
from tests.conftest import ROOT, dvc_env

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, every request fails at once
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-quic",
    f"--proxy-server={DEAD_PROXY}", "--host-resolver-rules=MAP * ~NOTFOUND",  # the network is unreachable
    "--hide-scrollbars", "--virtual-time-budget=15000",  # let vega-embed render before the dump
]
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
REMOTE_RESOURCE = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//", re.I)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                                reason=f"no Chromium at {CHROMIUM}: apt-get install chromium to run the browser test")


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
    """For each element id in `ids`: the charts (svg/canvas with class `marks`), images and visible text inside."""

    def __init__(self, ids):
        super().__init__()
        self.ids = set(ids)
        self.stack = []  # (tag, plot id the element is inside, or None)
        self.charts = {i: [] for i in ids}
        self.images = {i: [] for i in ids}
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


def plot_definitions(dvc_yaml):
    """(HTML id of the plot's div, its properties, whether it is an image) for each plot in dvc.yaml."""
    for item in yaml.safe_load(dvc_yaml.read_text()).get("plots", []):
        name, props = (item, {}) if isinstance(item, str) else next(iter(item.items()))
        props = props or {}
        image = not props.get("y") and Path(name).suffix in ImageRenderer.EXTENSIONS
        yield Renderer.remove_special_chars(name), props, image


def test_plots_page_renders_offline(finished_project, tmp_path):
    project = finished_project
    template_setting = ConfigObj(str(ROOT / ".dvc/config"))["plots"]["html_template"]
    assert template_setting == plots_template.CONFIG_VALUE, "the committed .dvc/config must name the template"

    # Without the template, DVC's page loads vega from a CDN: offline it draws nothing (the issue).
    plots_show(project, "-o", "cdn_plots")
    defs = list(plot_definitions(project.path / "dvc.yaml"))
    vega_ids = [i for i, _, image in defs if not image]
    assert vega_ids, "dvc.yaml defines no vega plots"
    cdn = PlotDivs(vega_ids)
    cdn.feed(chromium(project.path / "cdn_plots/index.html", tmp_path, "--dump-dom"))
    assert not any(cdn.charts.values()), "the network is not blocked: the CDN page rendered"

    # Configured but not generated (set-up not run): DVC fails, naming the placeholder, and writes no page.
    project.dvc("config", "plots.html_template", template_setting)
    missing = plots_show(project, check=False)
    assert missing.returncode != 0
    assert "HTML template has to contain '{plot_divs}'" in missing.stdout + missing.stderr
    assert not (project.path / "dvc_plots/index.html").exists()

    project.run(sys.executable, "-m", "stages.plots_template")
    assert (project.path / plots_template.TEMPLATE).is_file()
    plots_show(project)
    index = project.path / "dvc_plots/index.html"
    page = index.read_text(encoding="utf-8")
    assert not REMOTE_RESOURCE.findall(page), "the page loads something from the network"
    assert "vegaEmbed" in page

    dom = PlotDivs([i for i, _, _ in defs])
    dom.feed(chromium(index, tmp_path, "--dump-dom"))
    for plot_id, props, image in defs:
        assert plot_id in dom.charts, f"no <div id={plot_id!r}> in the page"
        if image:
            assert dom.images[plot_id], f"plot {plot_id}: no <img>"
            for src in dom.images[plot_id]:
                assert (index.parent / src).is_file(), f"plot {plot_id}: image {src} is missing"
            continue
        assert len(dom.charts[plot_id]) == 1, f"plot {plot_id} did not render (charts: {dom.charts[plot_id]})"
        if dom.charts[plot_id] == ["svg"]:  # an SVG chart's text is in the DOM: check what it says
            text = " ".join(dom.text[plot_id])
            files = list(props.get("y", {}))
            if len(files) > 1:  # the legend names each file less the common prefix: <variant>/<file>
                for file in files:
                    shown = "/".join(Path(file).parts[-2:])
                    assert shown in text, f"plot {plot_id}: no {shown} in its legend"
                assert {Path(f).parts[-2] for f in files} == set(VARIANTS), f"plot {plot_id}: not both variants"
            for key in ("title", "x_label", "y_label"):
                if props.get(key):
                    assert props[key] in text, f"plot {plot_id}: no {key} {props[key]!r}"

    screenshot = tmp_path / "plots.png"
    chromium(index, tmp_path, f"--screenshot={screenshot}", "--window-size=1400,3200")
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("PLOTS_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["PLOTS_SCREENSHOT"])
