"""Every card's HTML reads well in JupyterLab's light and dark themes, and on a plain
white page (the fallbacks): text contrast at least 4.5:1 (WCAG AA), glyph marks 3:1.

The colours are resolved the way a browser does (`var(--name, fallback)`, `inherit`,
rgba blended over the background), with the variables' values from JupyterLab's own
theme packages. `examples/theme_screenshots.py` renders the same HTML in headless
Chromium for a look by eye."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from llm_magic.display import (
    BatchProgress,
    LoadCard,
    ModelRow,
    ModelsCard,
    PromptView,
    StatusLine,
    StreamView,
    UnloadCard,
)
from llm_magic.loading import ModelInfo
from llm_magic.results import GenerationResult, GenerationResults

# From @jupyterlab/theme-light-extension and theme-dark-extension (variables.css).
THEMES = {
    "jupyterlab-light": {
        "--jp-layout-color0": "#ffffff",
        "--jp-layout-color2": "#eeeeee",
        "--jp-ui-font-color2": "rgba(0,0,0,0.54)",
        "--jp-content-font-color1": "rgba(0,0,0,0.87)",
        "--jp-success-color0": "#388e3c",
        "--jp-error-color1": "#f44336",
        "--jp-warn-color0": "#f57c00",
    },
    "jupyterlab-dark": {
        "--jp-layout-color0": "#111111",
        "--jp-layout-color2": "#424242",
        "--jp-ui-font-color2": "rgba(255,255,255,0.54)",
        "--jp-content-font-color1": "rgba(255,255,255,1)",
        "--jp-success-color0": "#388e3c",
        "--jp-error-color1": "#f44336",
        "--jp-warn-color0": "#f57c00",
    },
    "plain white page": {},  # no variables: the fallbacks, black text on white
}
GLYPHS = set("✓✗⚠")


def _rgba(text: str) -> tuple[float, float, float, float]:
    text = text.strip().lower()
    if text.startswith("#"):
        h = text[1:]
        h = "".join(c * 2 for c in h) if len(h) == 3 else h
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16), 1.0
    m = re.fullmatch(r"rgba?\(([^)]*)\)", text)
    assert m, f"unknown colour {text!r}"
    parts = [float(x) for x in m.group(1).split(",")]
    return parts[0], parts[1], parts[2], parts[3] if len(parts) == 4 else 1.0


def _over(color, background):
    r, g, b, a = color
    br, bg, bb, _ = background
    return r * a + br * (1 - a), g * a + bg * (1 - a), b * a + bb * (1 - a), 1.0


def _luminance(c) -> float:
    def channel(v):
        v /= 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

    return 0.2126 * channel(c[0]) + 0.7152 * channel(c[1]) + 0.0722 * channel(c[2])


def contrast(fg, bg) -> float:
    a, b = sorted((_luminance(_over(fg, bg)), _luminance(bg)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def _resolve(value: str, theme: dict, inherited):
    value = value.strip()
    m = re.fullmatch(r"var\((--[\w-]+)\s*(?:,\s*(.*))?\)", value)
    if m:
        name, fallback = m.groups()
        if name in theme:
            return _resolve(theme[name], theme, inherited)
        return _resolve(fallback, theme, inherited) if fallback else inherited
    if value == "inherit":
        return inherited
    return _rgba(value)


class _Walker(HTMLParser):
    """Each piece of text with the colour and background it is drawn in."""

    VOID = {"br", "img", "hr", "input", "progress"}

    def __init__(self, theme: dict):
        super().__init__()
        self.theme = theme
        page = _rgba(theme.get("--jp-layout-color0", "#ffffff"))
        text = _resolve(theme.get("--jp-content-font-color1", "#000000"), theme, (0, 0, 0, 1.0))
        self.stack = [(text, page)]
        self.texts: list[tuple[str, tuple, tuple]] = []

    def handle_starttag(self, tag, attrs):
        color, background = self.stack[-1]
        style = dict(attrs).get("style") or ""
        for decl in re.split(r";(?![^(]*\))", style):
            prop, _, value = decl.partition(":")
            prop = prop.strip()
            if prop == "color":
                color = _resolve(value, self.theme, color)
            elif prop in ("background", "background-color"):
                background = _over(_resolve(value, self.theme, background), background)
        if tag not in self.VOID:
            self.stack.append((color, background))

    def handle_endtag(self, tag):
        if tag not in self.VOID and len(self.stack) > 1:
            self.stack.pop()

    def handle_data(self, data):
        if data.strip():
            self.texts.append((data.strip(), *self.stack[-1]))


def _info(**changes) -> ModelInfo:
    values = dict(
        name="/models/SmolLM2-135M-Instruct.Q4_1.gguf",
        kind="gguf",
        class_name="LlamaForCausalLM",
        num_params=134_515_008,
        memory_bytes=269_030_016,
        device="cpu",
        dtype="bfloat16",
        dtype_reason="the CPU has native bf16",
        source="/cache/x",
        revision=None,
        load_seconds=1.9,
        warnings=("tokenizer has no pad token: generation pads with the eos token",),
    )
    values.update(changes)
    return ModelInfo(**values)


def _result(**changes) -> GenerationResult:
    values = dict(
        text="The capital of France is Paris. <b>bold?</b>",
        prompt="What is the capital of France?",
        rendered_prompt="<|im_start|>user\nWhat is the capital of France?",
        token_ids=(1, 2),
        prompt_tokens=12,
        new_tokens=8,
        time_to_first_token=0.2,
        seconds=1.0,
        tokens_per_second=8.0,
        stop_reason="eos",
        settings={"greedy": True},
        seed=None,
        model_id="/models/SmolLM2.gguf",
        revision=None,
        dtype="bfloat16",
        device="cpu",
        versions={},
        notes=("max_new_tokens lowered from 256 to 200",),
    )
    values.update(changes)
    return GenerationResult(**values)


CARDS = {
    "load card": LoadCard(_info(), "new", 1, 269_030_016, 1.9),
    "unload card (still held)": UnloadCard(
        (("/m/x", (), 100, "bfloat16"),), False, 200, 100, held_by=("m",)
    ),
    "models": ModelsCard(
        (ModelRow("smol", "/m/x.gguf", "", "bfloat16", "cpu", 100, 5.0, True),), 100, 1000
    ),
    "result": _result(),
    "results (--over)": GenerationResults([_result(), _result(stop_reason="length")]),
    "streaming": StreamView("The capital of"),
    "prompt (--show-prompt)": PromptView("<|im_start|>system\nYou are helpful.<|im_end|>", 14),
    "status line": StatusLine("reading weights…"),
    "batch progress": BatchProgress(1, 3, 24),
}


def card_html(card) -> str:
    bundle = card._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    return data["text/html"]


@pytest.mark.parametrize("theme", list(THEMES))
@pytest.mark.parametrize("kind", list(CARDS))
def test_every_card_reads_in_light_and_dark_themes(kind, theme):
    walker = _Walker(THEMES[theme])
    walker.feed(card_html(CARDS[kind]))
    assert walker.texts, "no text found"
    for text, color, background in walker.texts:
        needed = 3.0 if set(text) <= GLYPHS else 4.5
        ratio = contrast(color, background)
        assert ratio >= needed, f"{kind} in {theme}: {text[:40]!r} at {ratio:.1f}:1"


def test_the_contrast_check_sees_the_old_grey_on_dark():
    """The check itself: JupyterLab's dark background with the old hard-coded #666 fails."""
    dark = _rgba(THEMES["jupyterlab-dark"]["--jp-layout-color0"])
    assert (
        contrast(_rgba("#666666"), dark) < 4.5
        and contrast(_rgba("#ffffff"), _rgba("#f6f6f6")) < 1.2
    )
