"""A PNG of a run's report rendered by headless Chromium, compressed for a repository (default at most 300 KB).

    python -m biasprune.report.screenshot RUN_DIR OUT.png [--width 1280] [--height 1800] [--max-bytes 300000]

Chromium is the Debian package ``chromium`` (``apt-get install -y chromium``); the page needs no network and
no script. The report is written first when RUN_DIR has none. The PNG is reduced to a 256-colour palette (then
fewer colours, then a shorter crop) until it fits ``max_bytes``.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["CHROMIUM_FLAGS", "chromium_path", "compress_png", "layout", "main", "render", "screenshot"]

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--force-device-scale-factor=1")


def chromium_path() -> str | None:
    """The first Chromium (or Chrome) on PATH, or None."""
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def render(html: str | Path, out: str | Path, width: int = 1280, height: int = 1800, timeout: float = 120.0) -> Path:
    """Render ``html`` (a file) to the PNG ``out`` with headless Chromium, one ``width`` × ``height`` window."""
    exe = chromium_path()
    if exe is None:
        raise FileNotFoundError(f"no Chromium found on PATH (looked for {list(CHROMIUM_NAMES)}); on Debian/Ubuntu:"
                                " sudo apt-get install -y chromium")
    html, out = Path(html).resolve(), Path(out)
    with tempfile.TemporaryDirectory(prefix="biasprune-chromium-") as profile:
        raw = Path(profile) / "shot.png"
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}/profile", f"--screenshot={raw}",
               f"--window-size={width},{height}", html.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not raw.is_file():
            raise RuntimeError(f"{exe} did not write a screenshot of {html} (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(raw, out)
    return out


# Measures the page in the browser: the viewport, the page's width, every element that sticks out of the viewport
# (content of a scrolling table box excepted) and every table wider than its box, with whether that box scrolls.
_LAYOUT_SCRIPT = r"""<script>
window.addEventListener('load', () => {
  const vw = document.documentElement.clientWidth;
  const out = {viewport: vw, page_width: document.documentElement.scrollWidth, beyond: [], clipped: [], tables: 0, scrolling: 0};
  const name = el => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + (el.className ? '.' + String(el.className).split(' ').join('.') : '');
  for (const el of document.querySelectorAll('main *')) {
    if (el.closest('.wrap') && !el.classList.contains('wrap')) continue;
    const r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > vw + 0.5) out.beyond.push(name(el) + ' ends at ' + Math.round(r.right) + 'px');
  }
  for (const t of document.querySelectorAll('main table')) {
    out.tables++;
    const box = t.closest('.wrap');
    if (!box) { out.clipped.push('a table outside a scrolling box'); continue; }
    if (t.scrollWidth > box.clientWidth + 0.5) {
      const ox = getComputedStyle(box).overflowX;
      if (ox === 'auto' || ox === 'scroll') out.scrolling++; else out.clipped.push(name(box) + ' (overflow-x: ' + ox + ')');
    }
  }
  parent.postMessage(JSON.stringify(out), '*');
});
</script>"""
# Chromium's window is at least ~500 px wide: a narrower viewport is an iframe of that width.
_LAYOUT_FRAME = """<!DOCTYPE html><html><body style="margin:0"><iframe src="page.html" style="border:0;width:{width}px;height:900px"></iframe>
<script>window.addEventListener('message', e => document.body.setAttribute('data-layout', e.data));</script></body></html>"""


def layout(html: str | Path, width: int, timeout: float = 120.0) -> dict:
    """How headless Chromium lays out the page ``html`` (a file) in a viewport ``width`` px wide (scrollbar included):
    ``viewport``, ``page_width`` (wider than the viewport: the page scrolls sideways), ``beyond`` (elements that
    stick out of the viewport), ``tables``, ``scrolling`` (tables wider than their box, which scrolls) and
    ``clipped`` (tables wider than a box that does not scroll)."""
    import html as html_lib
    import json
    import re

    exe = chromium_path()
    if exe is None:
        raise FileNotFoundError(f"no Chromium found on PATH (looked for {list(CHROMIUM_NAMES)})")
    source = Path(html).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="biasprune-layout-") as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(source.replace("</body>", _LAYOUT_SCRIPT + "</body>", 1), encoding="utf-8")
        frame = Path(tmp) / "frame.html"
        frame.write_text(_LAYOUT_FRAME.format(width=width), encoding="utf-8")
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/profile", f"--window-size={max(width, 1400) + 40},1000",
               "--virtual-time-budget=15000", "--dump-dom", frame.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    found = re.search(r'data-layout="([^"]*)"', proc.stdout)
    if found is None:
        raise RuntimeError(f"{exe} reported no layout of {html} (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    return json.loads(html_lib.unescape(found.group(1)))


def compress_png(path: str | Path, max_bytes: int = 300_000) -> int:
    """Rewrite the PNG at ``path`` as a palette image, fewer colours or a shorter crop until it has at most
    ``max_bytes``; return its size. Without Pillow the file is left as it is."""
    path = Path(path)
    try:
        from PIL import Image
    except ImportError:
        return path.stat().st_size
    with Image.open(path) as im:
        im = im.convert("RGB")
    best = path.read_bytes()
    for colors in (256, 128, 64, 32):
        buf = io.BytesIO()
        im.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(buf, format="PNG", optimize=True)
        best = min(best, buf.getvalue(), key=len)
        if len(best) <= max_bytes:
            break
    while len(best) > max_bytes and im.height > 400:
        im = im.crop((0, 0, im.width, int(im.height * 0.85)))
        buf = io.BytesIO()
        im.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(buf, format="PNG", optimize=True)
        best = buf.getvalue()
    path.write_bytes(best)
    return len(best)


def screenshot(run_dir: str | Path, out: str | Path, width: int = 1280, height: int = 1800, max_bytes: int = 300_000) -> Path:
    """A compressed screenshot of ``run_dir``'s report (written first when missing)."""
    from biasprune.report import REPORT_FILE, write_report

    page = Path(run_dir) / REPORT_FILE
    if not page.is_file():
        page = write_report(run_dir, tensorboard=False)
    out = render(page, out, width, height)
    compress_png(out, max_bytes)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m biasprune.report.screenshot", description="A compressed PNG of a run's report rendered by headless Chromium.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("out", metavar="OUT.png")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=1800)
    p.add_argument("--max-bytes", type=int, default=300_000)
    args = p.parse_args(argv)
    from biasprune.report import ReportError

    try:
        out = screenshot(args.run_dir, args.out, args.width, args.height, args.max_bytes)
    except (ReportError, FileNotFoundError, RuntimeError) as err:
        print(f"biasprune screenshot: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"screenshot: {out} ({out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
