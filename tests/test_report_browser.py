"""The HTML report in a real browser: Debian's headless Chromium renders it, every image loads, nothing errors.

Slow (it builds a report from the committed Pendulum study and starts a browser); skipped where no ``chromium``
is installed (``apt-get install chromium``). A copy of the page gets a probe script at its top that records
script errors, failed resource loads and ``console.error`` calls, and on ``load`` writes how many images there
are and how many failed to decode; ``--dump-dom`` returns the page with that record. The report itself has no
script. ``RLFLAT_SCREENSHOT=path.png`` keeps the screenshot (docs/report_screenshot.png was made so).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
PROBE = """<script>
window.__problems = [];
window.addEventListener('error', function (e) { var t = e.target;
  window.__problems.push(t && t.tagName ? 'resource ' + t.tagName : 'script ' + e.message); }, true);
console.error = function () { window.__problems.push('console.error ' + Array.prototype.join.call(arguments, ' ')); };
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  var pre = document.createElement('pre'); pre.id = 'rlflat-check';
  pre.textContent = JSON.stringify({images: imgs.length, broken: broken, problems: window.__problems});
  document.body.appendChild(pre);
});
</script>
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)"),
]


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    command = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rlflat.report.render import build_report

    study = tmp_path_factory.mktemp("study") / "pendulum_sam"
    shutil.copytree(ROOT / "results" / "pendulum_sam", study, ignore=shutil.ignore_patterns("report"))
    return build_report([study]) / "report.html"


def test_every_image_loads_and_nothing_errors(report_html: Path, tmp_path: Path) -> None:
    page = report_html.read_text()
    probed = report_html.with_name("probed.html")
    probed.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    done = _chromium(tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="rlflat-check">(.*?)</pre>', done.stdout, flags=re.DOTALL)
    assert found is not None, done.stderr[-2000:]
    check = json.loads(found.group(1).replace("&quot;", '"'))
    assert check["images"] == page.count("<img") > 0
    assert check["broken"] == 0 and check["problems"] == []


def test_screenshot(report_html: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    args = ["--hide-scrollbars", "--window-size=1280,1600", f"--screenshot={shot}", report_html.as_uri()]
    done = _chromium(tmp_path / "profile", *args)
    assert shot.is_file() and shot.stat().st_size > 20_000, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if keep := os.environ.get("RLFLAT_SCREENSHOT"):
        shutil.copyfile(shot, keep)
