"""Render an HTML page in headless Chromium (Debian's `chromium` package): a screenshot, and
whether every image on the page decoded (no broken-image icons).

    shot = render_page(html_path, tmp_path)     # {"png": Path, "images": n, "broken": [...]}

The page is copied with a small script appended that, once everything has loaded, writes the
number of <img> elements and the alt text of those that did not decode (naturalWidth 0) into
the DOM; `--dump-dom` prints that DOM. The original page is not changed.
"""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--hide-scrollbars", "--virtual-time-budget=5000"]
PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const out = document.createElement("pre");
  out.id = "image-probe";
  out.textContent = JSON.stringify({images: imgs.length, broken: broken});
  document.body.appendChild(out);
});
</script>"""


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180)


def render_page(page: Path, work: Path, width: int = 1400, height: int = 4000) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    probe = work / f"{page.stem}-probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium(["--dump-dom", probe.as_uri()], work / "profile-dom")
    found = re.search(r'<pre id="image-probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, f"the probe did not run: {dom.stderr[-2000:]}"
    result = json.loads(html.unescape(found.group(1)))
    png = work / f"{page.stem}.png"
    shot = _chromium([f"--screenshot={png}", f"--window-size={width},{height}", page.as_uri()],
                     work / "profile-shot")
    assert png.is_file(), f"no screenshot: {shot.stderr[-2000:]}"
    return {"png": png, **result}


def picture_blocks(png: Path, size: int = 40, min_std: float = 12.0) -> int:
    """How many size x size tiles of the screenshot (on a grid of size // 2) look like
    photographs: colourful texture, not page background, text or a flat placeholder. A
    broken-image icon or a blank thumbnail has neither the area nor the texture."""
    from PIL import Image

    a = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32)
    step = size // 2
    count = 0
    for y in range(0, a.shape[0] - size, step):
        for x in range(0, a.shape[1] - size, step):
            tile = a[y:y + size, x:x + size]
            nonwhite = (tile.min(2) < 235).mean()
            if nonwhite > 0.97 and tile.std(axis=(0, 1)).mean() > min_std:
                count += 1
    return count
