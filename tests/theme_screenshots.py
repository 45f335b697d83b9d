"""Screenshots of every card in JupyterLab's light and dark themes, with headless
Chromium, for a look by eye (the contrast itself is tested in test_display_themes.py).

    python tests/theme_screenshots.py [OUT_DIR]     # needs chromium (apt-get install chromium)
"""

from __future__ import annotations

import html
import shutil
import subprocess
import sys
from pathlib import Path

sys.path[:0] = [
    str(Path(__file__).parent),
    str(Path(__file__).parents[1]),
]  # this checkout's llm_magic
from test_display_themes import CARDS, THEMES, card_html  # noqa: E402


def page(theme: dict) -> str:
    variables = "".join(f"{k}:{v};" for k, v in theme.items())
    background = theme.get("--jp-layout-color0", "#ffffff")
    text = theme.get("--jp-content-font-color1", "#000000")
    body = "".join(
        f"<h4 style='color:{text};font-family:sans-serif;margin:1em 0 .3em'>"
        f"{html.escape(kind)}</h4>"
        f"<div style='color:{text}'>{card_html(card)}</div>"
        for kind, card in CARDS.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<style>:root{{{variables}}}</style></head>"
        f"<body style='background:{background};margin:1em;width:900px'>{body}</body></html>"
    )


def main(out: Path) -> list[Path]:
    chromium = (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )
    if chromium is None:
        raise SystemExit("no chromium: apt-get install -y chromium")
    out.mkdir(parents=True, exist_ok=True)
    shots = []
    for name, theme in THEMES.items():
        slug = name.replace(" ", "-")
        source = out / f"{slug}.html"
        source.write_text(page(theme), encoding="utf-8")
        png = out / f"{slug}.png"
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=960,1500",
                f"--screenshot={png}",
                source.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        shots.append(png)
    return shots


if __name__ == "__main__":
    for shot in main(Path(sys.argv[1] if len(sys.argv) > 1 else "theme-screenshots")):
        print(shot)
