"""Every card's HTML reads well in JupyterLab's light and dark themes, and on a plain
white page (the fallbacks): text contrast at least 4.5:1 (WCAG AA), glyph marks 3:1.
Every colour is a theme variable with a fallback, written in the style table only, and
every text a card shows is escaped.

The colours are resolved the way a browser does (`var(--name, fallback)`, `inherit`,
rgba blended over the background), with the variables' values from JupyterLab's own
theme packages. `examples/theme_screenshots.py` renders the same HTML in headless
Chromium for a look by eye."""

from __future__ import annotations

import ast
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from llm_magic.conversations import Conversation, Turn
from llm_magic.display import (
    BatchProgress,
    ColumnsView,
    CommandsCard,
    ConversationsCard,
    ConversationView,
    DiskCard,
    LoadCard,
    ModelRow,
    ModelsCard,
    PromptView,
    ServerCard,
    StatusLine,
    StreamView,
    UnloadCard,
    style,
)
from llm_magic.display.adapters import AdapterCard, adapter_rows
from llm_magic.engines.base import AdapterInfo, ModelInfo
from llm_magic.engines.server_load import ServerInfo
from llm_magic.logprobs import Alternative, TokenLogprob
from llm_magic.results import ChatResult, Comparison, GenerationResult, GenerationResults
from llm_magic.scores import ChoiceScores, ScoreResult, ScoreResults
from llm_magic.sources.gguf_cache import ConvertedCopy

# From JupyterLab 4's @jupyterlab/theme-light-extension and theme-dark-extension
# (style/variables.css, the md-* palette values they name).
THEMES = {
    "jupyterlab-light": {
        "--jp-layout-color0": "#ffffff",
        "--jp-layout-color2": "#eeeeee",
        "--jp-ui-font-color2": "rgba(0,0,0,0.54)",
        "--jp-content-font-color1": "rgba(0,0,0,0.87)",
        "--jp-success-color0": "#1b5e20",
        "--jp-error-color1": "#d32f2f",
        "--jp-warn-color0": "#e65100",
        "--jp-warn-color1": "#f57c00",
    },
    "jupyterlab-dark": {
        "--jp-layout-color0": "#111111",
        "--jp-layout-color2": "#424242",
        "--jp-ui-font-color2": "rgba(255,255,255,0.54)",
        "--jp-content-font-color1": "rgba(255,255,255,1)",
        "--jp-success-color0": "#388e3c",
        "--jp-error-color1": "#f44336",
        "--jp-warn-color0": "#f57c00",
        "--jp-warn-color1": "#ff9800",
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


# Text from the user, the model, the file system or a server, with markup in it: every
# card must show it as text (escaped), never as markup.
MARKUP = "<i>x</i>"


def _info(**changes) -> ModelInfo:
    values = dict(
        name=f"/models/{MARKUP}'SmolLM2-135M-Instruct.Q4_1.gguf",
        kind="gguf",
        class_name="LlamaForCausalLM",
        num_params=134_515_008,
        memory_bytes=269_030_016,
        device="cpu",
        dtype="bfloat16",
        dtype_reason="the CPU has native bf16",
        source=f"/cache/{MARKUP}",
        revision=None,
        load_seconds=1.9,
        converted_from=f"/models/{MARKUP}.gguf",
        warnings=(f"tokenizer has no pad token {MARKUP}",),
        chat_template=False,
    )
    values.update(changes)
    return ModelInfo(**values)


def _result(**changes) -> GenerationResult:
    values = dict(
        text=f"The capital of France is Paris. {MARKUP}",
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
        model_id=f"/models/{MARKUP}SmolLM2.gguf",
        revision=None,
        dtype="bfloat16",
        device="cpu",
        versions={},
        notes=(f"max_new_tokens lowered from 256 to 200 {MARKUP}",),
    )
    values.update(changes)
    return GenerationResult(**values)


def _copy(name: str, **changes) -> ConvertedCopy:
    values = dict(
        folder=f"/cache/{name}",
        name=name,
        dtype="bfloat16",
        size_bytes=270_000_000,
        gguf=f"/models/{MARKUP}.gguf",
        source_exists=True,
        source_matches=True,
    )
    values.update(changes)
    return ConvertedCopy(**values)


_SERVER = ServerInfo(
    name=f"org/{MARKUP}",
    kind="server",
    class_name="served",
    num_params=0,
    memory_bytes=0,
    device="http://127.0.0.1:8000/v1",
    dtype="served",
    dtype_reason="chosen by the server",
    source="http://127.0.0.1:8000/v1",
    revision=None,
    engine="server",
    url="http://127.0.0.1:8000/v1",
    served=({"id": f"org/{MARKUP}", "owned_by": MARKUP}, {"id": MARKUP}),
    server=f"vllm {MARKUP}",
    latency=0.012,
    load_seconds=0.02,
    api_key_env="OPENAI_API_KEY",
    warnings=(f"the server did not say its context {MARKUP}",),
)
_CONVERSATION = Conversation(
    f"c{MARKUP}",
    f"smol{MARKUP}",
    f"You are helpful. {MARKUP}",
    [Turn(f"Hi {MARKUP}", f"Hello {MARKUP}"), Turn("And?", f"Well {MARKUP}", interrupted=True)],
    sent_from=1,
)


def _tokens(text_pieces: list[str]) -> tuple[TokenLogprob, ...]:
    """Token records for the pieces, one in each probability band, with markup in the
    alternatives too."""
    probabilities = (0.95, 0.7, 0.3, 0.05)
    return tuple(
        TokenLogprob.of(
            i,
            piece,
            i,
            math.log(probabilities[i % 4]),
            (Alternative(MARKUP, 7, -1.5), Alternative(f"'{MARKUP}\"", 8, -2.5)),
        )
        for i, piece in enumerate(text_pieces)
    )


_PIECES = ["The", " capital", " of", " France", " is", " Paris", ".", " ", MARKUP]
_SCORED = ScoreResult(
    text="".join(_PIECES),
    context=f"Where? {MARKUP}",
    context_shown=f"<|im_start|>user\nWhere? {MARKUP}<|im_end|>",
    tokens=_tokens(_PIECES),
    context_tokens=9,
    greedy=False,
    model_id=f"/models/{MARKUP}SmolLM2.gguf",
    dtype="float32",
    seconds=0.2,
    distribution=f"the model's own {MARKUP}",
    templated=True,
    notes=(f"the boundary falls inside a token {MARKUP}",),
)
_CHOICES = ChoiceScores(
    f"Capital? {MARKUP}",
    ("Paris", MARKUP),
    (_SCORED, ScoreResult(**{**_SCORED.__dict__, "tokens": _tokens(["x", "y"])})),
    answer=1,
)

_ADAPTER = AdapterInfo(
    name=f"lora{MARKUP}",
    path=f"/adapters/{MARKUP}",
    format="peft",
    rank=8,
    alpha=16.0,
    kinds=("q_proj", MARKUP),
    modules=60,
    memory_bytes=3_000_000,
    base_model=f"org/{MARKUP}",
)


def _comparison(over: bool) -> Comparison:
    one = GenerationResults([_result(), _result(error=f"failed {MARKUP}")]) if over else _result()
    comparison = Comparison({f"smol:{MARKUP}": one, "smol:base": one})
    comparison.seed, comparison.notes = 7, (f"loaded again {MARKUP}",)
    return comparison


CARDS = {
    "load card": LoadCard(
        _info(), "new", 1, 269_030_016, 1.9, aliases=(MARKUP,), budget_notes=(MARKUP,)
    ),
    "server card": ServerCard(_SERVER, "new", 1, 0, 0.02, aliases=(MARKUP,)),
    "unload card (still held)": UnloadCard(
        ((f"/m/{MARKUP}", (MARKUP,), 100, "bfloat16"),), False, 200, 100, held_by=(MARKUP,)
    ),
    "models": ModelsCard(
        (ModelRow(MARKUP, f"/m/{MARKUP}'x.gguf", "", "bfloat16", "cpu", 100, 5.0, True),),
        100,
        1000,
    ),
    "disk": DiskCard(
        f"/cache/{MARKUP}",
        (_copy(MARKUP), _copy("b", source_matches=False), _copy("c", problem=MARKUP)),
        free_bytes=10**9,
    ),
    "commands (%llm_load, no MODEL)": CommandsCard(
        f"What this machine can load now {MARKUP}",
        ((f"cached {MARKUP}", ((MARKUP, MARKUP, f"%llm_load {MARKUP}"),)), ("none", ())),
        (MARKUP,),
    ),
    "result": _result(),
    "results (--over)": GenerationResults(
        [_result(), _result(stop_reason="length", error=f"failed {MARKUP}")]
    ),
    "chat answer": ChatResult.of(_result(), _CONVERSATION, (MARKUP,)),
    "result with --logprobs (tokens by probability)": _result(
        text="".join(_PIECES), tokens=_tokens(_PIECES), distribution=f"own {MARKUP}"
    ),
    "score (%%llm_score)": _SCORED,
    "choices (%%llm_score --choices)": _CHOICES,
    "scores (%%llm_score --over)": ScoreResults([_SCORED, _CHOICES]),
    "conversation (--show)": ConversationView.of(_CONVERSATION),
    "conversations (--list)": ConversationsCard(((MARKUP, MARKUP, 2, True), ("b", None, 1, False))),
    "streaming": StreamView(f"The capital of {MARKUP}", (MARKUP,)),
    "prompt (--show-prompt)": PromptView(f"<|im_start|>system\n{MARKUP}<|im_end|>", 14),
    "status line": StatusLine(f"reading weights… {MARKUP}"),
    "batch progress": BatchProgress(1, 3, 24),
    "load card with adapters": LoadCard(
        _info(), "new", 1, 1, 1.0, extra_rows=tuple(adapter_rows((_ADAPTER,), None, MARKUP))
    ),
    "adapters (%llm_adapter)": AdapterCard(
        f"/m/{MARKUP}",
        MARKUP,
        "loaded",
        (_ADAPTER,),
        _ADAPTER.name,
        (_ADAPTER.name,),
        3_000_000,
        100,
        200,
        model_bytes=10**8,
        served=(MARKUP,),
        budget_notes=(MARKUP,),
    ),
    "adapter unloaded (still held)": AdapterCard(
        f"/m/{MARKUP}", MARKUP, "unloaded", (), None, (MARKUP,), 10, 200, 100, freed=False
    ),
    "models with adapters": ModelsCard(
        (
            ModelRow(
                MARKUP, f"/m/{MARKUP}", "", "bf16", "cpu", 100, 5.0, True, 0, ((MARKUP, 9),), MARKUP
            ),
        ),
        100,
        1000,
    ),
    "side by side (streaming)": ColumnsView(((MARKUP, f"text {MARKUP}", f"footer {MARKUP}"),)),
    "side by side (result)": _comparison(over=False),
    "side by side (--over)": _comparison(over=True),
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


class _Markup(HTMLParser):
    """The tags, attributes and inline styles of a piece of HTML."""

    def __init__(self):
        super().__init__()
        self.tags: set[str] = set()
        self.attributes: set[str] = set()
        self.styles: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attributes |= {name for name, _ in attrs}
        self.styles += [value for name, value in attrs if name == "style" and value]


def _markup(html_text: str) -> _Markup:
    parser = _Markup()
    parser.feed(html_text)
    return parser


# What the cards themselves write; anything else came from a text left unescaped.
CARD_TAGS = {"div", "span", "b", "table", "tr", "td", "th", "pre", "code", "progress"}
CARD_ATTRIBUTES = {"style", "title", "value", "max"}


@pytest.mark.parametrize("kind", list(CARDS))
def test_every_card_escapes_what_it_shows(kind):
    html_text = card_html(CARDS[kind])
    found = _markup(html_text)
    assert found.tags <= CARD_TAGS, f"{kind}: unescaped markup {found.tags - CARD_TAGS}"
    assert found.attributes <= CARD_ATTRIBUTES, f"{kind}: {found.attributes - CARD_ATTRIBUTES}"
    if kind != "batch progress":  # counts only
        assert "&lt;i&gt;x&lt;/i&gt;" in html_text


_THEME_VARIABLE = re.compile(r"var\(--jp-[\w-]+,\s*[^()\s][^()]*\)")
_COLOUR_LITERAL = re.compile(r"#[0-9a-fA-F]{3,8}\b|\b(?:rgba?|hsla?)\(")
_COLOUR_PROPERTIES = {"color", "background", "background-color", "border-color"}


@pytest.mark.parametrize("kind", list(CARDS))
def test_every_colour_a_card_draws_is_a_theme_variable_with_a_fallback(kind):
    for style_text in _markup(card_html(CARDS[kind])).styles:
        for declaration in re.split(r";(?![^(]*\))", style_text):
            prop, _, value = (part.strip() for part in declaration.partition(":"))
            if prop in _COLOUR_PROPERTIES:
                assert value == "inherit" or _THEME_VARIABLE.fullmatch(value), (kind, declaration)
            assert not _COLOUR_LITERAL.search(_THEME_VARIABLE.sub("", value)), (kind, declaration)


def test_the_style_table_holds_theme_variables_only():
    colours = {"DIM", "TEXT", "BOX", "OK", "ERROR", "WARN"}
    for name in colours:
        assert _THEME_VARIABLE.fullmatch(getattr(style, name)), name
    for name in ("TEXT_STYLE", "FOOTER_STYLE", "ROLE_STYLE", "STATUS_STYLE", "CARD_STYLE"):
        assert not _COLOUR_LITERAL.search(_THEME_VARIABLE.sub("", getattr(style, name))), name


def test_no_module_but_the_style_table_writes_a_colour():
    package = Path(style.__file__).parents[1]
    written = []
    for path in sorted(package.rglob("*.py")):
        if path == Path(style.__file__):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if _COLOUR_LITERAL.search(node.value) or re.search(
                    r"(?<![\w-])(?:color|background)\s*:\s*[#\w]", node.value
                ):
                    written.append(f"{path.relative_to(package)}:{node.lineno}: {node.value!r}")
    assert not written, "\n".join(written)


def test_the_warn_mark_stands_out_in_every_theme():
    """The ⚠ and the rule of a warning (3:1, non-text contrast) on each theme's page; and
    the check itself: JupyterLab 4 light's next warn colour would not do on white."""
    for name, theme in THEMES.items():
        page = _rgba(theme.get("--jp-layout-color0", "#ffffff"))
        warn = _resolve(style.WARN, theme, None)
        assert contrast(warn, page) >= 3.0, f"{name}: {contrast(warn, page):.1f}:1"
    light = THEMES["jupyterlab-light"]
    assert contrast(_rgba(light["--jp-warn-color1"]), _rgba(light["--jp-layout-color0"])) < 3.0
