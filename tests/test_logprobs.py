"""`--logprobs [K]`: each new token's log-probability and its K likeliest alternatives,
from the model's own distribution (before temperature/top-k/top-p). On transformers they
equal a forward pass over prompt + answer done by hand; on llama.cpp, raw
llama-cpp-python's for the same request; the flag, the trait, the frame and the views."""

from __future__ import annotations

import pytest

import llm_magic
from llm_magic import GenerationError
from llm_magic.logprobs import DISTRIBUTION_SHORT


@pytest.fixture
def tiny(tiny_varied_dir):
    """The tiny GPT-2 with wide random weights, in float32: its greedy path wanders."""
    return llm_magic.load(str(tiny_varied_dir), dtype="float32", alias="tiny")


def recomputed(handle, prompt_ids, answer_ids):
    """Log-softmax rows of one forward pass over prompt + answer, for each answer token."""
    import torch

    ids = list(prompt_ids) + list(answer_ids)
    with torch.no_grad():
        logits = handle.model(torch.tensor([ids])).logits[0]
    rows = torch.log_softmax(logits.double(), dim=-1)
    return rows[len(prompt_ids) - 1 : len(ids) - 1]


def prompt_ids(handle, text):
    return handle.tokenizer(text)["input_ids"]


def test_greedy_logprobs_equal_a_forward_pass_over_prompt_and_answer(tiny):
    result = llm_magic.generate("The capital of", greedy=True, max_new_tokens=24, logprobs=3)
    assert len(result.tokens) == result.new_tokens == 24
    rows = recomputed(tiny, prompt_ids(tiny, "The capital of"), result.token_ids)
    gaps = [abs(t.logprob - rows[i, t.token_id].item()) for i, t in enumerate(result.tokens)]
    assert max(gaps) < 1e-4, gaps
    for i, token in enumerate(result.tokens):
        assert [a.token_id for a in token.alternatives] == rows[i].topk(3).indices.tolist()
        assert token.alternatives[0].token_id == token.token_id  # greedy: the likeliest
        assert token.probability == pytest.approx(rows[i, token.token_id].exp().item(), rel=1e-4)
    assert [t.position for t in result.tokens] == list(range(24))
    assert "".join(t.token for t in result.tokens) == result.text
    assert result.logprob == pytest.approx(sum(t.logprob for t in result.tokens))


def test_sampled_logprobs_are_the_distribution_before_temperature_and_top_k(tiny):
    """Sampling at temperature 0.3 among the top 5: the figures are still the model's own
    distribution (the recomputed forward pass), not the sharpened, truncated one."""
    result = llm_magic.generate(
        "Hello", temperature=0.3, top_k=5, seed=3, max_new_tokens=16, logprobs=8
    )
    rows = recomputed(tiny, prompt_ids(tiny, "Hello"), result.token_ids)
    gaps = [abs(t.logprob - rows[i, t.token_id].item()) for i, t in enumerate(result.tokens)]
    assert max(gaps) < 1e-4, gaps
    # Eight alternatives though top-k kept five: nothing was cut off the figures.
    assert all(len(t.alternatives) == 8 for t in result.tokens)
    assert all(abs(sum(a.probability for a in t.alternatives) - 1) > 1e-3 for t in result.tokens)


def test_a_batch_keeps_each_rows_own_tokens(tiny):
    prompts = ["The capital of", "Hello world! Numbers", "A"]
    results = llm_magic.generate(
        "{item}", over=prompts, greedy=True, max_new_tokens=10, logprobs=2, batch_size=3
    )
    for text, result in zip(prompts, results, strict=True):
        assert len(result.tokens) == result.new_tokens
        rows = recomputed(tiny, prompt_ids(tiny, text), result.token_ids)
        gaps = [abs(t.logprob - rows[i, t.token_id].item()) for i, t in enumerate(result.tokens)]
        assert max(gaps) < 1e-4, (text, gaps)  # left padding changes no figure
    frame = results.to_pandas()
    assert list(frame["logprob"]) == pytest.approx([r.logprob for r in results])


def test_tokens_stop_where_the_answer_does(tiny):
    """An answer cut at a stop string keeps the tokens up to the one that completed it;
    the view draws the answer's text only."""
    full = llm_magic.generate("The capital of", greedy=True, max_new_tokens=20, logprobs=0)
    stop = full.text[8:10]
    cut = llm_magic.generate(
        "The capital of", greedy=True, max_new_tokens=20, logprobs=0, stop=stop
    )
    assert cut.stop_reason == "stop string" and len(cut.tokens) == cut.new_tokens < 20
    assert all(t.alternatives == () for t in cut.tokens)  # --logprobs 0: the tokens' own only
    assert "".join(t.token for t in cut.tokens).startswith(cut.text)


def test_the_flag_its_default_the_trait_and_bad_values(shell, tiny):
    plain = shell.run_cell_magic("llm_generate", "--greedy --max-new-tokens 3", "Hello")
    assert plain.tokens == () and "logprobs" not in plain.settings
    bare = shell.run_cell_magic("llm_generate", "--logprobs --greedy --max-new-tokens 3", "Hello")
    assert len(bare.tokens) == 3 and all(len(t.alternatives) == 5 for t in bare.tokens)
    two = shell.run_cell_magic("llm_generate", "--logprobs 2 --greedy --max-new-tokens 3", "Hi")
    assert all(len(t.alternatives) == 2 for t in two.tokens) and two.settings["logprobs"] == 2
    shell.run_line_magic("config", "LLMMagics.logprobs = 4")
    chat = shell.run_cell_magic("llm_chat", "--greedy --max-new-tokens 3", "Hello")
    assert len(chat.tokens) == 3 and all(len(t.alternatives) == 4 for t in chat.tokens)
    with pytest.raises(GenerationError, match="--logprobs 50: the alternatives kept"):
        llm_magic.generate("Hello", logprobs=50)


def test_the_frame_the_table_and_the_cell_view(tiny):
    result = llm_magic.generate("The capital of", greedy=True, max_new_tokens=8, logprobs=3)
    frame = result.tokens_frame()
    assert list(frame.columns) == [
        "position",
        "token",
        "token_id",
        "logprob",
        "probability",
        "alternatives",
    ]
    assert len(frame) == 8 and list(frame["token_id"]) == list(result.token_ids)
    assert frame["alternatives"][0][0] == (result.tokens[0].token, result.tokens[0].logprob)
    table = result.tokens_table().splitlines()
    assert len(table) == 9 and "alternatives" in table[0]
    data, meta = result._repr_mimebundle_()
    assert DISTRIBUTION_SHORT in data["text/plain"] and "tokens_table()" in data["text/plain"]
    spans = _titled_spans(data["text/html"])
    assert "".join(text for text, _ in spans) == result.text.rstrip("\n")
    assert all(
        title.startswith(repr(t.token)) for (_, title), t in zip(spans, result.tokens, strict=True)
    )
    assert "hover a token" in data["text/html"]
    assert meta["llm_magic"]["logprobs"]["top"] == 3
    assert meta["llm_magic"]["logprobs"]["total"] == pytest.approx(result.logprob)


def test_a_reuse_replay_keeps_the_tokens(shell, tiny, run_log):
    """A --logprobs answer replayed from the run log comes back with its token records."""
    line = "--greedy --max-new-tokens 4 --logprobs 2 --no-stream"
    first = shell.run_cell_magic("llm_generate", line, "Hello")
    again = shell.run_cell_magic("llm_generate", line + " --reuse", "Hello")
    assert again.replayed_from is not None and again.run_id == first.run_id
    assert again.tokens == first.tokens and len(again.tokens) == 4
    assert again.logprob == pytest.approx(first.logprob)
    assert len(_titled_spans(again.html())) == 4


def _titled_spans(markup: str) -> list[tuple[str, str]]:
    """(text, title) of each span with a title (a token), entities read."""
    from html.parser import HTMLParser

    class Spans(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.found: list[tuple[str, str]] = []
            self.title: str | None = None

        def handle_starttag(self, tag, attrs):
            self.title = dict(attrs).get("title") if tag == "span" else None

        def handle_data(self, data):
            if self.title is not None:
                self.found.append((data, self.title))
                self.title = None

    parser = Spans()
    parser.feed(markup)
    return parser.found


# --- llama.cpp ---------------------------------------------------------------------------


@pytest.mark.slow
def test_llama_cpp_logprobs_match_raw_llama_cpp_python(smollm2_gguf):
    """The same request to raw llama-cpp-python (logits_all=True, its own logprobs) gives
    the same figures; scoring uses the same context and generation goes on unchanged."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from llm_magic.generation import request
    from llm_magic.settings import Settings

    handle = llm_magic.load(smollm2_gguf, engine="llama.cpp", alias="lcpp")
    question = "What is the capital of France?"
    result = llm_magic.generate(question, model="lcpp", greedy=True, max_new_tokens=10, logprobs=3)
    ids = handle.engine.render(request(question, Settings())).payload
    raw = llama_cpp.Llama(model_path=smollm2_gguf, n_ctx=512, logits_all=True, verbose=False)
    try:
        reply = raw.create_completion(
            ids, max_tokens=10, temperature=0.0, logprobs=3, repeat_penalty=1.0
        )
        expected = reply["choices"][0]["logprobs"]
        assert reply["choices"][0]["text"] == result.text
        gaps = [
            abs(t.logprob - e)
            for t, e in zip(result.tokens, expected["token_logprobs"], strict=True)
        ]
        assert max(gaps) < 1e-4, gaps
        for token, top in zip(result.tokens, expected["top_logprobs"], strict=True):
            ranked = sorted(top.items(), key=lambda kv: -kv[1])[:3]
            assert [a.logprob for a in token.alternatives] == pytest.approx(
                [v for _, v in ranked], abs=1e-4
            )
        # Scoring: the rows raw llama-cpp-python keeps with logits_all for the same tokens.
        scored = llm_magic.score(
            " Paris.", context="The capital of France is", model="lcpp", raw=True
        )
        whole = raw.tokenize(b"The capital of France is Paris.", add_bos=True, special=True)
        raw.reset()
        raw.eval(whole)
        rows = llama_cpp.Llama.logits_to_logprobs(raw.scores[: len(whole)])
        start = len(whole) - scored.token_count
        by_raw = [float(rows[i - 1, whole[i]]) for i in range(start, len(whole))]
        assert [t.logprob for t in scored.tokens] == pytest.approx(by_raw, abs=1e-4)
    finally:
        raw.close()
    # The engine's context was emptied after scoring: generation reads its prompt afresh.
    again = llm_magic.generate(question, model="lcpp", greedy=True, max_new_tokens=10)
    assert again.text == result.text
