"""The one style table: every colour and shared inline style that cards and results draw
with. No other module writes a colour: they name these."""

from __future__ import annotations

# Colours from JupyterLab's theme variables, so light and dark themes both read well;
# the fallbacks serve classic Notebook, VS Code and static HTML (a white page).
# Text keeps the theme's own colours; the accent colours mark only glyphs and borders,
# since no single orange or red reads as text on both a white and a near-black page.
DIM = "var(--jp-ui-font-color2, #666)"  # labels, footers, status lines
TEXT = "var(--jp-content-font-color1, inherit)"
BOX = "var(--jp-layout-color2, #f0f0f0)"  # the --show-prompt box
OK = "var(--jp-success-color0, #2e7d32)"
ERROR = "var(--jp-error-color1, #c62828)"
# The warn glyph and rule: JupyterLab 4's darkest warn colour, 3.8:1 on its light theme's
# white and 7.0:1 on its dark theme's #111 (warn-color1 is 2.7:1 on white); the fallback
# 3.9:1 on a white page. Too light for text: warnings are written in TEXT.
WARN = "var(--jp-warn-color0, #b26a00)"

# A card: its title, rows and notes in the notebook's monospace.
CARD_STYLE = "font-family:monospace;font-size:90%;line-height:1.4"
# A one-line status (progress, the current step).
STATUS_STYLE = f"font-family:monospace;color:{DIM}"
# Model text and prompts: wrapped, in the notebook's own font.
TEXT_STYLE = "white-space:pre-wrap;font-family:inherit;margin:0"
# The line under a text: counts, timings, what stopped it.
FOOTER_STYLE = f"font-family:monospace;font-size:85%;color:{DIM};margin-top:.4em"
# The role above each message of a conversation.
ROLE_STYLE = f"font-family:monospace;font-size:85%;color:{DIM};margin-top:.5em"
# A parsed answer under the text it was read from: a small table, or pretty JSON.
DATA_STYLE = (
    f"font-family:monospace;font-size:90%;margin-top:.4em;border-left:3px solid {DIM};"
    "padding-left:.5em"
)

# Tokens drawn by the model's probability (--logprobs, %%llm_score). The text keeps the
# theme's colour (no tint reads as text on both a white and a near-black page); the less
# likely a token, the stronger its underline, and the least likely sit on the box colour.
# (the lowest probability of each band, its style), likeliest first.
TOKEN_BANDS: tuple[tuple[float, str], ...] = (
    (0.9, ""),
    (0.5, f"border-bottom:1px dotted {DIM}"),
    (0.2, f"border-bottom:2px solid {WARN}"),
    (0.0, f"border-bottom:2px solid {ERROR};background:{BOX}"),
)
TOKEN_LEGEND = "dotted: p < 0.9 · orange: p < 0.5 · red, shaded: p < 0.2"
# Models side by side (`-m A B`): columns that wrap onto new rows when the page is narrow.
COLUMNS_STYLE = "display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start"
COLUMN_STYLE = "flex:1 1 18em;min-width:0"
# A column's or a table's head: the model's name.
HEAD_STYLE = f"font-family:monospace;font-size:85%;color:{DIM};margin-bottom:.3em"
