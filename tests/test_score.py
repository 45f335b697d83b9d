"""`%%llm_score` and `llm_magic.score`: log-likelihoods of (context, continuation) pairs
equal lm-evaluation-harness's `HFLM.loglikelihood` on the same pairs (the tiny GPT-2 and
SmolLM2 in float32), boundaries inside a word and batches of mixed lengths included;
perplexity is exp of the mean negative log-likelihood of one forward pass done by hand;
choices, --over, Ctrl-C and the card of an engine that cannot score."""

from __future__ import annotations

import _thread
import io
import math
import sys
import threading
import time

import pytest

import llm_magic
from llm_magic import GenerationError
from llm_magic.engines.base import Capabilities
from llm_magic.scores import ChoiceScores, ScoreResult, ScoreResults

# Pairs as lm-evaluation-harness's tasks send them, and the awkward ones: a boundary inside
# a word (the context's tokens are not a prefix of the whole text's), a context ending in
# a space (moved to the continuation), an empty context (scored after the start token),
# lengths from 1 to 9 continuation tokens in one batch.
PAIRS = [
    ("The capital of France is", " Paris."),
    ("The capital of Fr", "ance is Paris."),
    ("Hello wor", "ld! Numbers like 0 1 2"),
    ("A notebook cell ", "holds code, text or a prompt for a model."),
    ("", "The quick brown fox jumps over the lazy dog."),
    ("Language models predict the next token", " from the ones before it."),
    ("The quick brown", " fox"),
]


def lm_eval_loglikelihoods(model, tokenizer, pairs, batch_size=4, chat=False):
    """HFLM.loglikelihood on the pairs: [(logprob, is_greedy)]. With `chat`, each context
    first goes through HFLM's own apply_chat_template (as `--apply_chat_template` does)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    if chat:
        pairs = [
            (lm.apply_chat_template([{"role": "user", "content": c}], True), x) for c, x in pairs
        ]
    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i)
        for i, pair in enumerate(pairs)
    ]
    return lm.loglikelihood(requests, disable_tqdm=True)


def ours(pairs, model, raw=True, batch_size=3):
    return [
        llm_magic.score(
            x,
            context=c if c else None,
            model=model,
            raw=raw,
            batch_size=batch_size,
            logprobs=0,
        )
        for c, x in pairs
    ]


@pytest.fixture
def tiny(tiny_varied_dir):
    """The tiny GPT-2 (wide random weights) in float32."""
    return llm_magic.load(str(tiny_varied_dir), dtype="float32", alias="tiny")


@pytest.fixture(autouse=True)
def _empty_cache_after_test():
    """Overrides conftest's: SmolLM2 (seconds to load) stays loaded from one test of this
    module to the next; every other model goes."""
    from llm_magic import MODEL_CACHE

    yield
    MODEL_CACHE.unload([e for e in MODEL_CACHE.entries() if "smol" not in e.aliases])


@pytest.fixture(scope="module")
def _smollm2_for_this_module(smollm2_gguf):
    yield
    llm_magic.unload(all=True)


def test_loglikelihoods_equal_lm_eval_on_the_tiny_model(tiny):
    reference = lm_eval_loglikelihoods(tiny.model, tiny.tokenizer, PAIRS)
    # One call for all pairs: batches of mixed lengths.
    batched = llm_magic.score(
        "{item[1]}", context="{item[0]}", over=PAIRS, model="tiny", raw=True, batch_size=3
    )
    one_by_one = ours(PAIRS, "tiny", batch_size=1)
    gaps = [abs(r.logprob - ll) for r, (ll, _) in zip(batched, reference, strict=True)]
    assert max(gaps) < 1e-4, gaps
    assert [r.greedy for r in batched] == [g for _, g in reference]
    # Padding changes no figure: the same pairs alone give the same numbers.
    assert max(abs(a.logprob - b.logprob) for a, b in zip(batched, one_by_one, strict=True)) < 1e-5
    # The boundary inside a word is said, with the tokens lm-evaluation-harness scores.
    inside = batched[1]
    assert any("boundary falls inside a token" in n for n in inside.notes)
    assert not any("boundary" in n for n in batched[0].notes)


def test_perplexity_is_exp_of_the_mean_nll_of_one_forward_pass(tiny):
    import torch

    text = "The quick brown fox jumps over the lazy dog."
    result = llm_magic.score(text, model="tiny")
    tokenizer = tiny.tokenizer
    ids = [tokenizer.bos_token_id] + tokenizer.encode(text, add_special_tokens=False)
    with torch.no_grad():
        logits = tiny.model(torch.tensor([ids])).logits[0]
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    by_hand = [logprobs[i - 1, ids[i]].item() for i in range(1, len(ids))]
    nll = -sum(by_hand) / len(by_hand)
    assert result.token_count == len(ids) - 1 and result.context_tokens == 1
    assert result.perplexity == pytest.approx(math.exp(nll), rel=1e-4)
    assert result.logprob == pytest.approx(sum(by_hand), abs=1e-4)
    assert [t.token_id for t in result.tokens] == ids[1:]
    assert "".join(t.token for t in result.tokens) == text
    for token, row in zip(result.tokens, range(len(ids) - 1), strict=True):
        top = torch.topk(logprobs[row], 5).indices.tolist()
        assert [a.token_id for a in token.alternatives] == top  # 5 alternatives by default


def test_choices_give_probabilities_best_and_lm_eval_acc_norm(tiny):
    """acc and acc_norm as lm-evaluation-harness's process_results computes them from the
    choices' log-likelihoods (acc_norm: divided by the length of the choice as given)."""
    question = "The capital of France is"
    choices = ["Paris", "a city by the sea", "Rome"]
    result = llm_magic.score(question, choices=choices, answer="Rome", model="tiny")
    assert isinstance(result, ChoiceScores)
    reference = lm_eval_loglikelihoods(
        tiny.model, tiny.tokenizer, [(question, " " + c) for c in choices]
    )
    lls = [ll for ll, _ in reference]
    assert max(abs(a - b) for a, b in zip(result.logprobs.values(), lls, strict=True)) < 1e-4
    assert sum(result.probabilities.values()) == pytest.approx(1.0)
    softmax = [math.exp(v - max(lls)) for v in lls]
    assert list(result.probabilities.values()) == pytest.approx([v / sum(softmax) for v in softmax])
    assert result.best == choices[lls.index(max(lls))]
    per_char = [ll / len(c) for ll, c in zip(lls, choices, strict=True)]
    assert result.per_char == pytest.approx(per_char, abs=1e-5)
    assert result.best_norm == choices[per_char.index(max(per_char))]
    assert result.acc == float(result.best == "Rome")
    assert result.acc_norm == float(result.best_norm == "Rome")
    frame = result.frame()
    assert list(frame["choice"]) == choices and frame["probability"].sum() == pytest.approx(1)
    assert list(frame["logprob_per_char"]) == pytest.approx(per_char, abs=1e-5)


def test_over_items_with_their_own_choices_make_a_frame_with_accuracy(shell, tiny):
    shell.user_ns["quiz"] = [
        {"q": "The capital of France is", "choices": ["Paris", "Rome"], "answer": 0},
        {"q": "The quick brown", "choices": ["fox", "dog", "cat"], "answer": "fox"},
        {"q": "Hello", "choices": ["world", "numbers"], "answer": 1},
    ]
    results = shell.run_cell_magic("llm_score", "-m tiny --over quiz", "{item[q]}")
    assert isinstance(results, ScoreResults) and len(results) == 3
    frame = results.to_pandas()
    assert list(frame["item"]) == [0, 1, 2]
    assert list(frame["answer"]) == ["Paris", "fox", "numbers"]
    acc = [float(r.best_index == r.answer) for r in results]
    assert list(frame["acc"]) == acc and results.accuracy["acc"] == pytest.approx(sum(acc) / 3)
    single = llm_magic.score("The quick brown", choices=["fox", "dog", "cat"], model="tiny")
    assert results[1].probabilities == pytest.approx(single.probabilities, abs=1e-6)


def test_the_magic_takes_variables_and_shows_escaped_tokens(shell, tiny):
    shell.user_ns["question"] = "The <b>capital</b> of {France} is"
    shell.user_ns["options"] = ["Paris", "Rome"]
    choices = shell.run_cell_magic(
        "llm_score", "-m tiny --choices options --answer Paris --out kept", "{question}"
    )
    assert choices.context == "The <b>capital</b> of {France} is"
    assert shell.user_ns["kept"] is choices and set(choices.probabilities) == {"Paris", "Rome"}
    scored = shell.run_cell_magic("llm_score", "-m tiny --context question", " Paris <i>x</i>")
    assert scored.context == "The <b>capital</b> of {France} is"  # the variable, not filled
    data, meta = scored._repr_mimebundle_()
    assert "<i>" not in data["text/html"] and " Paris <i>x</i>" in _text_of(data["text/html"])
    assert "title=" in data["text/html"] and meta["llm_magic"]["tokens"] == scored.token_count
    assert "perplexity" in data["text/plain"] and "before temperature" in data["text/plain"]
    words = shell.run_cell_magic("llm_score", "-m tiny --choices 'New York' Paris", "Go to")
    assert words.choices == ("New York", "Paris")


def _text_of(markup: str) -> str:
    """The text a browser shows for `markup` (its tags gone, its entities read)."""
    from html.parser import HTMLParser

    class Text(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.parts: list[str] = []

        def handle_data(self, data):
            self.parts.append(data)

    parser = Text()
    parser.feed(markup)
    return "".join(parser.parts)


def _interrupted(shell, cell, at: str):
    """Run `cell`, pressing Ctrl-C (from another thread, like a signal) when `at` first
    appears on stderr (the progress line)."""

    class Watched(io.StringIO):
        pressed = False

        def write(self, text):
            written = super().write(text)
            if not self.pressed and at in self.getvalue():
                self.pressed = True
                threading.Thread(target=_thread.interrupt_main).start()
                time.sleep(0.5)
            return written

    watched, printed, old = Watched(), io.StringIO(), (sys.stdout, sys.stderr)
    sys.stdout, sys.stderr = printed, watched
    try:
        result = shell.run_cell(cell, store_history=True)
    finally:
        sys.stdout, sys.stderr = old
    return result, printed.getvalue()


def test_ctrl_c_keeps_the_items_scored(shell, tiny):
    shell.user_ns["texts"] = [f"The quick brown fox {i} " * 30 for i in range(6)]
    cell = "%%llm_score -m tiny --over texts --batch-size 1\n{item}"
    result, out = _interrupted(shell, cell, at="1/6")  # a batch of one: a step per item
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    partial = shell.user_ns["_"]
    assert isinstance(partial, ScoreResults) and 1 <= len(partial) < 6 and partial.interrupted
    assert "interrupted" in partial.summary()
    assert (
        out.strip()
        .splitlines()[-1]
        .startswith("KeyboardInterrupt: scoring stopped; the partial result is in _, Out[")
    )
    assert "Traceback" not in out
    # What was kept is whole and right: the same as scoring those items again.
    again = llm_magic.score(shell.user_ns["texts"][partial.indices[0]], model="tiny")
    assert partial[0].logprob == pytest.approx(again.logprob, abs=1e-5)


def test_an_engine_that_cannot_score_gets_the_card(tiny, monkeypatch):
    """The capability is asked, not the engine's kind: an engine declaring no prompt
    log-probabilities is refused before any work, with what to use instead."""
    engine = tiny.engine
    monkeypatch.setattr(engine, "capabilities", Capabilities(group="batch"))
    with pytest.raises(GenerationError, match="cannot score text with this engine") as info:
        llm_magic.score("Hello", model="tiny")
    assert any("vLLM" in f for f in info.value.diagnosis.fixes)
    with pytest.raises(GenerationError, match="--logprobs: .* cannot give log-probabilities"):
        llm_magic.generate("Hello", model="tiny", logprobs=2, max_new_tokens=2)


def test_bad_requests_are_refused_before_any_work(tiny):
    with pytest.raises(GenerationError, match="at least two choices"):
        llm_magic.score("Q", choices=["A"], model="tiny")
    with pytest.raises(GenerationError, match="given twice"):
        llm_magic.score("Q", choices=["A", "A"], model="tiny")
    with pytest.raises(GenerationError, match="not one of the choices"):
        llm_magic.score("Q", choices=["A", "B"], answer="C", model="tiny")
    with pytest.raises(GenerationError, match="nothing to score"):
        llm_magic.score("  ", model="tiny")
    with pytest.raises(GenerationError, match="no token left to score"):
        llm_magic.score("tal", context="The capi", model="tiny", raw=True)


# --- SmolLM2 in float32 ----------------------------------------------------------------------


@pytest.fixture
def smollm2(smollm2_gguf, _smollm2_for_this_module):
    """SmolLM2 in float32, loaded once for the module (a cache hit after the first test)."""
    return llm_magic.load(smollm2_gguf, dtype="float32", alias="smol")


@pytest.mark.slow
def test_smollm2_loglikelihoods_equal_lm_eval_plain_and_chat_templated(smollm2):
    reference = lm_eval_loglikelihoods(smollm2.model, smollm2.tokenizer, PAIRS)
    plain = llm_magic.score(
        "{item[1]}", context="{item[0]}", over=PAIRS, model="smol", raw=True, batch_size=4
    )
    gaps = [abs(r.logprob - ll) for r, (ll, _) in zip(plain, reference, strict=True)]
    assert max(gaps) < 1e-4, gaps
    # Through the chat template: as HFLM with apply_chat_template (the user's turn, then
    # the continuation as the assistant's answer).
    chat_pairs = [(c, x) for c, x in PAIRS if c]
    chat_reference = lm_eval_loglikelihoods(smollm2.model, smollm2.tokenizer, chat_pairs, chat=True)
    templated = ours(chat_pairs, "smol", raw=False, batch_size=4)
    gaps = [abs(r.logprob - ll) for r, (ll, _) in zip(templated, chat_reference, strict=True)]
    assert max(gaps) < 1e-4, gaps
    assert all(r.templated and "<|im_start|>assistant" in r.context_shown for r in templated)
    assert "chat template applied" in templated[0].footer()


@pytest.mark.slow
def test_smollm2_knows_the_capital(smollm2):
    result = llm_magic.score(
        "What is the capital of France?", choices=["Paris", "London", "Berlin"], model="smol"
    )
    assert result.best == "Paris" and result.probabilities["Paris"] > 0.5
    assert isinstance(result.scores[0], ScoreResult) and result.scores[0].templated
