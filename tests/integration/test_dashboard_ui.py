"""The monitoring dashboard as a person sees it: `evidently ui` served on 127.0.0.1, the project's
dashboard page rendered by headless Chromium (Debian's ``chromium``; ``.ci/run`` installs it), a
screenshot kept under ``reports/``, and the rendered DOM + pixels checked for panels drawn with data.

The Evidently UI is a single-page app: the page fetches the dashboard and every panel's series after
load, so the page is rendered with a virtual-time budget (Chromium advances its clock only once the
page's requests have answered) and the DOM is dumped after that render, not taken from the server.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from plantwatch.config import Params
from plantwatch.monitoring import MonitoringPaths, dashboard_panels, monitor_batch
from plantwatch.paths import ProjectPaths
from tests.integration import test_monitoring
from tests.integration.test_monitoring import scored
from tests.integration.test_service import free_port, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

log = logging.getLogger(__name__)

#: The monitoring tests' module fixtures, reused: params.yaml, and a seeded 2-asset simulator
#: reference window followed by normal and drifted daily batches.
params = test_monitoring.params
frames = test_monitoring.frames

#: Batches monitored, oldest first. The LAST one is drifted on purpose: Evidently 0.7.23's UI shows
#: "no value" on a counter whose value is 0 (it tests the number for truthiness), so a calm last
#: batch would leave the "Drifted sensors, last batch" counter without a number to check.
BATCHES = ("normal0", "normal1", "drift2")
#: Tall enough for every panel of both dashboard tabs (the UI stacks them on one page).
WINDOW = (1400, 2800)
#: Virtual milliseconds Chromium grants the page to fetch its data and draw (about 3 s of real time).
VIRTUAL_TIME_MS = 15_000
UI_START_S = 45.0
BROWSER_S = 45.0
STOP_S = 10.0
#: Flags for headless Chromium on this machine (closed network, running as root, no GPU); reduced
#: motion makes the chart library draw its lines finished instead of mid-animation.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-prefers-reduced-motion",
)
#: Pixels of chart colour (HSV saturation above SATURATED) a rendered dashboard must show; the
#: Evidently logo alone has about 500, the eight panels with data about 18,000.
SATURATED = 100
MIN_CHART_PIXELS = 5_000
MIN_GREY_STDDEV = 10.0
#: Where a person (or a CI artifact step) finds the last screenshot, outside the repo tree.
SCREENSHOT_COPY = Path(tempfile.gettempdir()) / "plantwatch-dashboard.png"
_LINE_CLASS = "MuiLineElement-root"  # one SVG path per plotted series
_MARK_CLASS = "MuiMarkElement-root"  # one SVG circle per plotted point


@dataclass
class PanelView:
    """What one rendered dashboard card shows: title, plotted series and points, big-number text."""

    title: str = ""
    series: int = 0
    points: int = 0
    counter: list[str] = field(default_factory=list)


class _CardParser(HTMLParser):
    """Collects the dashboard's cards (MUI ``Card`` divs) from a dumped DOM, one PanelView each."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: list[PanelView] = []
        self._div_depth = 0
        self._card_depth: int | None = None
        self._text_into: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if tag == "div":
            self._div_depth += 1
            if self._card_depth is None and "MuiCard-root" in classes:
                self._card_depth = self._div_depth
                self.cards.append(PanelView())
        if self._card_depth is None:
            return
        card = self.cards[-1]
        if tag == "path" and _LINE_CLASS in classes:
            card.series += 1
        elif tag == "circle" and _MARK_CLASS in classes:
            card.points += 1
        elif tag in ("h5", "h2"):
            self._text_into = tag

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h5", "h2"):
            self._text_into = None
        if tag == "div":
            if self._card_depth == self._div_depth:
                self._card_depth = None
            self._div_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._card_depth is None or self._text_into is None:
            return
        card = self.cards[-1]
        if self._text_into == "h5":
            card.title += data.strip()
        else:
            card.counter.append(data.strip())


def rendered_panels(dom: str) -> list[PanelView]:
    parser = _CardParser()
    parser.feed(dom)
    parser.close()
    return parser.cards


def chromium_binary() -> str:
    """Debian's chromium; missing is a failure, not a skip (CI installs it in .ci/run)."""
    found = shutil.which("chromium")
    if found is None:
        pytest.fail(
            "chromium not found: the dashboard UI test needs Debian's chromium "
            "(as root: apt-get update && apt-get install -y chromium; .ci/run does this)",
            pytrace=False,
        )
    return found


def fill_workspace(root: Path, params: Params, frames: dict[str, pd.DataFrame]) -> list[float]:
    """Monitor the BATCHES as the inference log has them; returns each batch's drifted share."""
    paths = ProjectPaths.at(root)
    reference = scored(frames["reference"], "v1", seed=1)  # reference scores -> score drift panel
    shares = []
    for i, name in enumerate(BATCHES):
        batch = scored(frames[name], "v1", alert_share=0.001 * (i + 1), seed=10 + i)
        outcome = monitor_batch(batch, params=params, paths=paths, batch_id=name, reference=reference)
        assert outcome.result.decided and outcome.result.drift_share is not None, outcome.result.reason
        assert outcome.result.score is not None, "reference scores were not compared"
        shares.append(outcome.result.drift_share)
    return shares


@contextmanager
def evidently_ui(workspace: Path, log_path: Path) -> Iterator[str]:
    """`evidently ui` on a free 127.0.0.1 port (as `make dashboards` runs it); SIGTERM on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        str(Path(sys.executable).with_name("evidently")),
        "ui",
        "--workspace",
        str(workspace),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:

            def answers() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"evidently ui exited ({proc.returncode}): {log_path.read_text()}")
                try:
                    return httpx.get(f"{url}/api/projects", timeout=2.0).status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(answers, UI_START_S, f"evidently ui on {url}", interval=0.25)
            yield url
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_S)


def dashboard_url(url: str, project_name: str) -> str:
    """The SPA page of the project's dashboard (route ``/projects/:projectId``), id from the UI's API."""
    projects = httpx.get(f"{url}/api/projects", timeout=10.0).json()
    ids = [p["id"] for p in projects if p["name"] == project_name]
    assert len(ids) == 1, f"expected one project {project_name!r}, the UI lists {projects}"
    return f"{url}/projects/{ids[0]}"


def render(page: str, screenshot: Path, profile: Path) -> str:
    """Screenshot + DOM of the page after the SPA fetched its data and drew (one Chromium run)."""
    cmd = [
        chromium_binary(),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--virtual-time-budget={VIRTUAL_TIME_MS}",
        f"--screenshot={screenshot}",
        "--dump-dom",
        page,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=BROWSER_S, check=False)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    assert screenshot.is_file(), f"chromium wrote no screenshot: {done.stderr[-2000:]}"
    return done.stdout


def test_dashboard_renders_every_panel_with_data_in_headless_chromium(
    project: Path, tmp_path: Path, params: Params, frames: dict[str, pd.DataFrame]
) -> None:
    chromium_binary()  # fail fast, before any work, when the browser is missing
    shares = fill_workspace(project, params, frames)
    assert shares[-1] > 0, "the last batch must be drifted (see BATCHES)"
    workspace = MonitoringPaths.of(ProjectPaths.at(project)).workspace
    screenshot = ProjectPaths.at(project).reports / "dashboard.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)

    with evidently_ui(workspace, tmp_path / "evidently-ui.log") as url:
        page = dashboard_url(url, params.monitor.project)
        dom = render(page, screenshot, tmp_path / "chromium-profile")
    shutil.copyfile(screenshot, SCREENSHOT_COPY)
    log.info("dashboard screenshot: %s (copy: %s)", screenshot, SCREENSHOT_COPY)

    expected = {panel.title: panel for _, panel in dashboard_panels(params.data.sensor_names, params.monitor)}
    cards = rendered_panels(dom)
    assert sorted(c.title for c in cards) == sorted(expected), f"rendered cards: {[c.title for c in cards]}"
    for card in cards:
        panel = expected[card.title]
        if panel.plot_params.get("plot_type") == "counter":
            # The UI rounds to 2 decimals and prints the JS number: 1.0 -> "1", 0.5 -> "0.5".
            assert card.counter[:1] == [f"{round(shares[-1], 2):g}"], (card.title, card.counter)
            assert card.series == 0
        else:
            assert card.series == len(panel.values), (card.title, card.series)
            assert card.points == len(panel.values) * len(BATCHES), (card.title, card.points)

    image = Image.open(screenshot)
    assert image.size == WINDOW
    grey = np.asarray(image.convert("L"), dtype=float)
    assert grey.std() > MIN_GREY_STDDEV, f"blank screenshot {screenshot}"
    saturation = np.asarray(image.convert("RGB").convert("HSV").getchannel("S"))
    chart_pixels = int((saturation > SATURATED).sum())
    assert chart_pixels > MIN_CHART_PIXELS, f"{screenshot}: {chart_pixels} chart-coloured pixels, no charts?"
