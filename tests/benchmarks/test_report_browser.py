"""The HTML report in a real browser (headless Chromium): every plot decodes and the grid sets plots side by side."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks.harness.report import Result, write_report

INSTALL = "apt-get install -y --no-install-recommends chromium"
# appended to a copy of the page: once everything has loaded, the title says how many images are broken, how many
# there are, and how many plots the first grid puts in its first row
PROBE = """<script>
addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter(image => !image.complete || image.naturalWidth === 0).length;
  const figures = [...document.querySelectorAll(".plots")[0].children];
  const row = figures.filter(figure => figure.offsetTop === figures[0].offsetTop).length;
  document.title = `images: ${broken} broken of ${images.length}, ${row} in a row`;
});
</script>"""
GRID = [[97.19, 98.69, 98.20, 92.30], [96.78, 98.26, 97.66, 91.05], [97.26, 96.82, 95.66, 89.12],
        [79.94, 78.10, 68.73, 40.24]]


def _chromium() -> str:
    """Chromium's path; without it a skip, or a failure where DROPPOS_REQUIRE_CHROMIUM=1 (CI)."""
    path = shutil.which("chromium")
    if path is None:
        reason = f"chromium is not installed; on Debian: {INSTALL}"
        if os.environ.get("DROPPOS_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"DROPPOS_REQUIRE_CHROMIUM=1 but {reason}")
        pytest.skip(reason)
    return path


def _loaded(chromium: str, page: Path, profile: Path) -> tuple[int, int, int]:
    """(broken images, images, plots in the first grid row) of `page` as a 1100 px wide Chromium window shows it."""
    probe = page.with_name(f"probe-{page.name}")
    probe.write_text(page.read_text().replace("</body>", f"{PROBE}\n</body>"))
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1100,800",
               f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    match = re.search(r"<title>images: (\d+) broken of (\d+), (\d+) in a row</title>", dom)
    assert match, f"the page's load handler did not run; the DOM starts {dom[:300]!r}"
    return int(match[1]), int(match[2]), int(match[3])


def test_every_plot_of_the_report_loads_in_chromium(tmp_path):
    chromium = _chromium()
    results = [
        Result("DropPos 200ep", "tab6:DropPos 200", {"APb": 42.31, "mIoU": 40.7},
               curves={"seg": [(10, 2.0), (20, 1.5)]}),
        Result("gamma 0.75", "tab1:0.75", {"ft_top1": 82.9, "position": 88.0}, grids={"position": GRID},
               curves={"cls.finetune": [(1, 1.4), (2, 1.2)]}),
        Result("random init", None, {"ft_top1": 70.1}, curves={"seg": [(10, 2.3), (20, 2.2)]}),
    ]
    page = write_report(results, tmp_path / "report", chance={"ft_top1": 0.1, "position": 0.51})
    assert "chance level" in page.read_text()
    # Table 1: 2 bar charts, a position grid, a loss chart; Table 6: 2 bar charts, a loss chart; other: 1 and 1
    assert len(list((tmp_path / "report" / "plots").rglob("*.png"))) == 9
    assert _loaded(chromium, page, tmp_path / "profile") == (0, 9, 3)

    broken = page.with_name("broken.html")  # the check can fail: one plot's data made unreadable
    broken.write_text(re.sub(r'src="data:image/png;base64,[^"]+"', 'src="data:image/png;base64,AAAA"',
                             page.read_text(), count=1))
    assert _loaded(chromium, broken, tmp_path / "profile")[:2] == (1, 9)
