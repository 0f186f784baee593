"""A page in real headless Chromium (Debian's chromium-headless-shell, from scripts/setup.sh):
its screenshot, its DOM as the browser parsed it, and the reachability matrix read back
from the screenshot's pixels (routed/lab/picture.py draws it)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image, ImageChops

from routed.lab import picture


def chromium() -> str | None:
    return shutil.which("chromium-headless-shell") or shutil.which("chromium")


class Browser:
    def __init__(self, binary: str):
        self.binary = binary

    def _run(self, page: Path, *flags: str) -> str:
        # --no-sandbox: Chromium refuses to start its sandbox as root (the tests run as root).
        # Its own profile directory: several tests (or helpers) may run a browser at once.
        # Every host name resolves to nothing: a page that tried to fetch would show it.
        with tempfile.TemporaryDirectory(prefix="routed-chromium-") as profile:
            proc = subprocess.run(
                [self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
                 "--force-device-scale-factor=1", f"--user-data-dir={profile}",
                 "--host-resolver-rules=MAP * ~NOTFOUND", *flags, page.resolve().as_uri()],
                capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise AssertionError(f"{self.binary} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return proc.stdout

    def screenshot(self, page: Path, png: Path, width: int = 1400, height: int = 1800) -> Image.Image:
        self._run(page, f"--window-size={width},{height}", f"--screenshot={png}")
        assert png.exists() and png.stat().st_size > 0, f"no screenshot written to {png}"
        return Image.open(png).convert("RGB")

    def dom(self, page: Path) -> str:
        return self._run(page, "--dump-dom")


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def colour_name(rgb: tuple[int, int, int], names=("ok", "no", "policy", "untested", "self")) -> str:
    """The matrix state whose colour this pixel is (within a little rendering slack), or "other"."""
    for name in names:
        if sum(abs(a - b) for a, b in zip(rgb, _rgb(picture.COLOURS[name]))) <= 24:
            return name
    return "other"


def matrix_cells(image: Image.Image, n: int) -> list[list[str]]:
    """The n x n matrix read from the screenshot: its frame (a colour nothing else uses)
    located, then each cell's centre pixel named by colour."""
    diff = ImageChops.difference(image, Image.new("RGB", image.size, _rgb(picture.COLOURS["frame"]))).split()
    off = ImageChops.lighter(ImageChops.lighter(diff[0], diff[1]), diff[2])  # the largest channel difference
    box = off.point(lambda v: 255 if v <= 6 else 0).getbbox()
    assert box, "no reachability matrix in the screenshot (its frame colour is nowhere)"
    left, top, right, bottom = box
    pixels = image.load()
    side = n * (picture.CELL + picture.GAP) + picture.GAP
    assert (right - left, bottom - top) == (side, side), \
        f"the matrix frame is {right - left}x{bottom - top}px, not {side}px square for {n} pods"
    step = picture.CELL + picture.GAP
    centre = picture.GAP + picture.CELL // 2
    return [[colour_name(pixels[left + centre + c * step, top + centre + r * step]) for c in range(n)]
            for r in range(n)]


def is_blank(image: Image.Image) -> bool:
    """One colour (or nearly): what a page that failed to render looks like."""
    colours = image.getcolors(maxcolors=1 << 16)
    return colours is not None and len(colours) < 8


def expected_cells(reach: dict) -> list[list[str]]:
    """The matrix as `routed lab status -o json` measured it, in the names matrix_cells reads."""
    labels = reach["pods"]
    return [["self" if s == d else picture.reach_state(reach["matrix"][s][d]) for d in labels] for s in labels]


def missing_from_dom(dom: str, data: dict) -> list[str]:
    """Every node, ToR, session (each end's row, and its line) and pod pair the status data
    names that the DOM Chromium built does not show."""
    wanted = [f'data-node="{n["name"]}"' for n in data["nodes"]]
    wanted += [f'data-router="{r["name"]}"' for r in data["routers"]]
    wanted += [f'data-speaker="{s["speaker"]}" data-peer-name="{s["name"]}" data-kind="{s["type"]}" '
               f'data-state="{s["state"]}"' for s in data["sessions"]]
    wanted += [f'data-session="{"~".join(sorted((s["speaker"], s["name"])))}"' for s in data["sessions"] if s["name"]]
    reach = data.get("reachability")
    if reach:
        wanted += [f'data-from="{s}" data-to="{d}" data-reach="{"self" if s == d else picture.reach_state(v)}"'
                   for s, row in reach["matrix"].items() for d, v in row.items()]
    return [w for w in wanted if w not in dom]
