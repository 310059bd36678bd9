"""The HTML report in a real browser: headless Chromium, offline (every host name resolves to nothing), opens
the page, which must render its title and sections and load every embedded image; a screenshot must not be
blank. Skipped, with the reason, where Chromium is not installed."""

from __future__ import annotations

import html
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from advlab.report import SECTION_IDS, write_report

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install "
                                "chromium); the browser test needs a headless browser")

# Written into the page's DOM once it has loaded: how many images there are, how many loaded, the sections.
PROBE = """<script>
(function () {
  function probe() {
    var imgs = Array.prototype.slice.call(document.images);
    var out = {
      title: document.title,
      images: imgs.length,
      loaded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
      widths: imgs.map(function (i) { return i.naturalWidth; }),
      sections: Array.prototype.map.call(document.querySelectorAll("section[id]"), function (s) { return s.id; }),
      headings: document.querySelectorAll("h2").length,
      tables: document.querySelectorAll("table").length
    };
    var pre = document.createElement("pre");
    pre.id = "advlab-probe";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }
  if (document.readyState === "complete") { probe(); } else { window.addEventListener("load", probe); }
})();
</script>"""


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from test_report_html import make_records

    base = tmp_path_factory.mktemp("browser")
    data = make_records(base)
    return write_report(data["records"], base / "report.html"), data


def test_report_renders_and_loads_every_image(report: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    path, _ = report
    page = path.read_text(encoding="utf-8")
    n_img = page.count("<img ")
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "\n</body>"), encoding="utf-8")
    run = _chromium(tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    m = re.search(r'<pre id="advlab-probe">(.*?)</pre>', run.stdout, re.S)
    assert m, f"the probe did not run; the page as rendered starts: {run.stdout[:500]!r}"
    got = json.loads(html.unescape(m.group(1)))
    assert got["title"] == "advlab robustness report"
    assert set(SECTION_IDS) <= set(got["sections"]) and got["sections"][0] == "warnings"
    assert got["images"] == n_img == 4
    assert got["loaded"] == got["images"], got
    assert all(w > 100 for w in got["widths"]), got
    assert got["headings"] == len(got["sections"]) and got["tables"] >= 5


def test_screenshot_is_not_blank(report: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    from PIL import Image

    path, _ = report
    shot = tmp_path / "shot.png"
    run = _chromium(tmp_path / "profile", "--hide-scrollbars", "--window-size=1280,2400",
                    f"--screenshot={shot}", path.as_uri())
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    with Image.open(io.BytesIO(shot.read_bytes())) as img:
        assert img.format == "PNG" and img.size == (1280, 2400)
        rgb = img.convert("RGB")
        colors = rgb.getcolors(maxcolors=1 << 20) or []
        assert len(colors) > 50, "the screenshot has almost no colours: nothing rendered"
        white = sum(count for count, c in colors if c == (255, 255, 255))
        assert white < 0.97 * rgb.size[0] * rgb.size[1], "the screenshot is (almost) all white"
        # the red frame of the unreliable-evaluation alert is drawn near the top of the page
        top = rgb.crop((0, 0, 1280, 800))
        assert any(r > 150 and g < 60 and b < 60 for _, (r, g, b) in top.getcolors(maxcolors=1 << 20) or [])
