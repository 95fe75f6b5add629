"""Check a ``biojax run`` report as a person sees it: render ``report.html`` in headless
Chromium and assert that every image loads (decoded, with a non-zero natural size, laid
out with a non-zero width); optionally save a screenshot of the rendered page.

    python3 benchmarks/check_report.py runs/alanine_dipeptide/report.html \
        [--screenshot report.png] [--chromium /usr/bin/chromium]

Chromium comes from the Debian packages (``apt-get install chromium``); no Python browser
driver is needed: a copy of the page gets a script that, after the load event, writes
each image's state into the DOM, and ``chromium --headless --dump-dom`` prints that DOM.
Exit status 0 when all images load, 1 otherwise (2: no Chromium).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

PROBE = """<script>
window.addEventListener('load', function () {
  var rows = Array.prototype.map.call(document.images, function (im) {
    var box = im.getBoundingClientRect();
    return {alt: im.alt, complete: im.complete, natural_width: im.naturalWidth,
            natural_height: im.naturalHeight, shown_width: box.width,
            shown_height: box.height, embedded: im.src.indexOf('data:image/') === 0};
  });
  var pre = document.createElement('pre');
  pre.id = 'biojax-image-check';
  pre.textContent = JSON.stringify(rows);
  document.body.appendChild(pre);
});
</script>"""


def find_chromium(given: str | None = None) -> str | None:
    """The Chromium binary: ``given``, or the first of chromium/chromium-browser/
    google-chrome on PATH."""
    if given:
        return given
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _chromium(binary: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    base = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--disable-dev-shm-usage", "--no-first-run", "--mute-audio"]
    return subprocess.run(base + list(args), capture_output=True, text=True, timeout=timeout)


def check_report(html_path: str, chromium: str | None = None,
                 screenshot: str | None = None) -> dict:
    """Render ``html_path`` in headless Chromium; returns {"images": [...], "ok": bool,
    "problems": [...], "chromium": version}. Raises FileNotFoundError without Chromium."""
    binary = find_chromium(chromium)
    if binary is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium)")
    with open(html_path, encoding="utf-8") as f:
        page = f.read()
    n_tags = len(re.findall(r"<img\b", page))
    with tempfile.TemporaryDirectory(prefix="biojax-report-check-") as tmp:
        probe = os.path.join(tmp, "report.html")
        with open(probe, "w", encoding="utf-8") as f:
            f.write(page.replace("</body>", PROBE + "</body>", 1))
        # own profile dir: no clash with another Chromium of the same user
        res = _chromium(binary, f"--user-data-dir={os.path.join(tmp, 'profile')}",
                        "--virtual-time-budget=10000", "--dump-dom", "file://" + probe)
        version = _chromium(binary, "--version", timeout=30).stdout.strip()
        if screenshot:
            _chromium(binary, f"--user-data-dir={os.path.join(tmp, 'profile2')}",
                      f"--screenshot={os.path.abspath(screenshot)}", "--window-size=1200,2400",
                      "file://" + os.path.abspath(html_path))
    match = re.search(r'<pre id="biojax-image-check">(.*?)</pre>', res.stdout, re.S)
    problems = []
    if not match:
        return {"ok": False, "images": [], "chromium": version,
                "problems": [f"the page did not finish loading in Chromium (exit "
                             f"{res.returncode}; {res.stderr.strip()[-500:]})"]}
    import html as _html

    images = json.loads(_html.unescape(match.group(1)))
    if not images:
        problems.append("the page has no images")
    if len(images) != n_tags:
        problems.append(f"{n_tags} <img> tags in the file, {len(images)} in the rendered page")
    for im in images:
        if not (im["complete"] and im["natural_width"] > 0 and im["natural_height"] > 0):
            problems.append(f"image {im['alt']!r} did not load")
        elif not im["shown_width"] > 0:
            problems.append(f"image {im['alt']!r} is not shown (width 0)")
        if not im["embedded"]:
            problems.append(f"image {im['alt']!r} is not embedded in the page")
    return {"ok": not problems, "images": images, "problems": problems, "chromium": version,
            "screenshot": screenshot}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", nargs="?", default="runs/alanine_dipeptide/report.html")
    p.add_argument("--screenshot", default=None, help="save the rendered page as PNG")
    p.add_argument("--chromium", default=None, help="Chromium binary")
    args = p.parse_args(argv)
    try:
        result = check_report(args.report, args.chromium, args.screenshot)
    except FileNotFoundError as exc:
        print(f"check_report: {exc}", file=sys.stderr)
        return 2
    for im in result["images"]:
        print(f"  {'ok ' if im['natural_width'] > 0 else 'BAD'} {im['natural_width']}×"
              f"{im['natural_height']} px, shown {im['shown_width']:.0f} px wide: {im['alt']}")
    print(f"{args.report}: {len(result['images'])} images, "
          f"{'all load' if result['ok'] else 'PROBLEMS: ' + '; '.join(result['problems'])} "
          f"({result['chromium']})")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
