"""What a run leaves in the run log (`runlog.py`), and what `--reuse` takes back from it.

Every run goes through `generation.py` or `scoring.py`, which hand each result to a
`Recorder`: one row per generation, chat turn, `--over` item and scored item (kind
'score': its figures in the `result` JSON), with the model's provenance (what MODEL was, its
alias, the Hub commit or the sha256 of its file or folder, engine, dtype, quantization,
device, server URL), the cell it came from, the settings and every field of the result.
A result field this module does not know (a parsed answer, log-probabilities, scores) goes
into the row's `result` JSON as it is: nothing here needs to change for it.

Exact replay: a deterministic request (greedy, or an explicit seed) is named by a sha256
over everything that decides its answer: the weights (commit or file hash), engine, dtype,
quantization, device, server, the settings that shape the text, the seed where sampling,
and the prompt exactly as the model reads it (the chat template applied). `--reuse`
answers such a request from the latest complete run of the same key."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from . import runlog, structured
from .engines.base import Engine, Rendered
from .logprobs import TokenLogprob
from .results import GenerationResult
from .runlog import Origin
from .scores import ChoiceScores, ScoreResult
from .settings import Settings

# Result fields that have a column of their own (field -> column).
_COLUMN_OF = {
    "text": "answer",
    "prompt": "prompt",
    "rendered_prompt": "rendered",
    "prompt_tokens": "prompt_tokens",
    "new_tokens": "new_tokens",
    "seconds": "seconds",
    "stop_reason": "stop_reason",
    "error": "error",
    "seed": "seed",
    "model_id": "model",
    "dtype": "dtype",
    "device": "device",
}
# Result fields kept elsewhere in the row (provenance, settings), or that name the log
# itself, or hold an object rather than a value (a chat answer's conversation).
_NOT_IN_RESULT = {"revision", "versions", "engine", "settings", "run_id", "replayed_from"}
_NOT_VALUES = {"conversation"}
# The bytes of an error kept in a row.
_ERROR_CHARS = 4000


@dataclass(frozen=True)
class ModelFacts:
    """Where a run's weights and engine come from, as the log records them."""

    model: str  # what MODEL was
    model_hash: str | None  # Hub commit, or 'sha256:...' of the file / folder
    engine: str
    dtype: str
    quantization: str | None
    device: str
    server: str | None
    provenance: dict[str, Any] = field(default_factory=dict)
    secret_names: tuple[str, ...] = ()  # a server model's --api-key-env

    def identity(self) -> dict[str, Any] | None:
        """What names these weights and how they run, for a request key; None when the
        weights are not known exactly (a Hub model without its commit, a hash that
        failed): such a request is never replayed."""
        if self.model_hash is None and self.server is None:
            return None
        return {
            "weights": self.model_hash or f"{self.server} {self.model}",
            "engine": self.engine,
            "dtype": self.dtype,
            "quantization": self.quantization,
            "device": self.device,
            "server_software": self.provenance.get("engine_facts", {}).get("server_software"),
        }


_FACTS: weakref.WeakKeyDictionary[Any, ModelFacts] = weakref.WeakKeyDictionary()


def model_facts(engine: Engine, log: runlog.RunLog | None = None) -> ModelFacts:
    """The facts of `engine`'s model, worked out once per loaded model (a model file is
    hashed once per version of it: the hash is kept in the log)."""
    try:
        found = _FACTS.get(engine)
    except TypeError:  # an engine that cannot be weakly referenced: no memo
        found = None
    if found is not None:
        return found
    info, described = engine.info, engine.describe()
    details = dict(info.details)
    weights_hash, failure = _weights_hash(info, log)
    provenance: dict[str, Any] = {
        "model_kind": info.kind,
        "source": info.source,
        "revision": info.revision,
        "converted_from": info.converted_from,
        "class": info.class_name,
        "parameters": info.num_params,
        "dtype_reason": info.dtype_reason,
        "details": details,
        "engine_facts": described,
    }
    if failure:
        provenance["hash_failed"] = failure
    facts = ModelFacts(
        model=info.name,
        model_hash=weights_hash,
        engine=info.engine,
        dtype=info.dtype,
        quantization=details.get("quantization"),
        device=info.device,
        server=described.get("server"),
        provenance=provenance,
        secret_names=tuple(n for n in (getattr(info, "api_key_env", None),) if n),
    )
    try:
        _FACTS[engine] = facts
    except TypeError:
        pass
    return facts


def _weights_hash(info: Any, log: runlog.RunLog | None) -> tuple[str | None, str | None]:
    """(the hash naming the weights, why there is none). A Hub snapshot is named by its
    commit; a .gguf (run as it is, or the file a converted copy came from) or a folder by
    the sha256 of its bytes."""
    if info.kind == "server":
        return None, None
    if info.kind == "hub":
        return info.revision, None if info.revision else "the snapshot's commit is not known"
    path = info.converted_from or info.source
    try:
        return runlog.model_hash(path, log), None
    except OSError as e:
        return None, f"{type(e).__name__}: {e}"


def deterministic(settings: Settings) -> bool:
    """Whether the same request gives the same answer: greedy, or sampled with a seed."""
    return settings.greedy or settings.seed is not None


def request_key(
    facts: ModelFacts,
    settings: Settings,
    seed: int | None,
    rendered: str,
    recorded: dict[str, Any] | None = None,
) -> str | None:
    """sha256 of everything that decides the answer (see the module's docstring); None
    when the weights are not known exactly. `recorded`: `settings.recorded()`, if made."""
    identity = facts.identity()
    if identity is None:
        return None
    payload = {
        "model": identity,
        "settings": settings.recorded() if recorded is None else recorded,
        "seed": None if settings.greedy else seed,
        "prompt": rendered,
    }
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=runlog.jsonable)
    return hashlib.sha256(text.encode()).hexdigest()


class Recorder:
    """One call's runs on their way into the log (a no-op while logging is off)."""

    def __init__(self, engine: Engine, settings: Settings, origin: Origin | None, kind: str):
        self.log = runlog.store()
        self.engine, self.settings = engine, settings
        self.origin = origin or Origin()
        self.kind = self.origin.kind or kind
        self.cell = runlog.current_cell()
        self.ids: dict[int, int] = {}  # item (0 for a single run) -> its row's id
        self._facts: ModelFacts | None = None
        # What every row of this call shares, made once (an --over writes many rows).
        self._shared: dict[str, Any] | None = None

    @property
    def facts(self) -> ModelFacts:
        if self._facts is None:
            self._facts = model_facts(self.engine, self.log)
        return self._facts

    def _key(self, seed: int | None, rendered: str) -> str | None:
        return request_key(self.facts, self.settings, seed, rendered, self.shared["recorded"])

    @property
    def shared(self) -> dict[str, Any]:
        if self._shared is None:
            self._shared = {
                "recorded": self.settings.recorded(),
                "settings": runlog.Json(runlog.dumps(asdict(self.settings))),
                "secrets": runlog.secrets_in_environment(self.facts.secret_names),
                "provenance": {},  # by library versions (the same within a call)
            }
        return self._shared

    # --- replay -------------------------------------------------------------------------

    def replayed(self, rows: Sequence[Rendered], seed: int | None) -> list[GenerationResult | None]:
        """For each rendered request, its answer from the log when the request is
        deterministic and an identical one completed before; else None (generate it)."""
        if self.log is None or not deterministic(self.settings):
            return [None] * len(rows)
        keys = [self._key(seed, r.shown) for r in rows]
        wanted = [k for k in keys if k is not None]
        if not wanted:
            return [None] * len(rows)
        try:
            found = self.log.find_answers(wanted)
        except (runlog.LogUnavailable, runlog.sqlite3.Error):
            return [None] * len(rows)
        return [
            self._result(found[k], r) if k is not None and k in found else None
            for k, r in zip(keys, rows, strict=True)
        ]

    def _result(self, row: dict[str, Any], rendered: Rendered) -> GenerationResult:
        """A logged run as the result a generation returns, saying where it came from."""
        stored = row.get("result") or {}
        provenance = row.get("provenance") or {}
        names = {f.name for f in fields(GenerationResult)}
        values: dict[str, Any] = {k: v for k, v in stored.items() if k in names}
        for name, column in _COLUMN_OF.items():
            values[name] = row.get(column)
        values.update(
            prompt=rendered.request.text,
            settings=self.settings.recorded(),
            revision=provenance.get("revision"),
            versions=provenance.get("versions") or {},
            engine=provenance.get("engine_facts"),
            token_ids=tuple(stored.get("token_ids") or ()),
            tokens=tuple(TokenLogprob.from_json(t) for t in stored.get("tokens") or ()),
            notes=tuple(stored.get("notes") or ()),
            batch=None,  # not one of this call's batches
            run_id=row["id"],
            replayed_from=runlog.local_time(row["time"]).strftime("%Y-%m-%d %H:%M:%S"),
        )
        values["prompt_tokens"] = values["prompt_tokens"] or 0
        values["new_tokens"] = values["new_tokens"] or 0
        values["seconds"] = values["seconds"] or 0.0
        values.setdefault("tokens_per_second", 0.0)
        values.setdefault("time_to_first_token", None)
        # The logged answer is plain data: read the text against the format again, so a
        # replay's .data is the same typed value (a pydantic instance) a generation gives.
        logged = values.pop("answer", None)
        fmt = self.settings.answer_format
        if fmt is not None:
            said = logged if isinstance(logged, dict) else {}
            values["answer"] = structured.check(
                fmt,
                values.get("text") or "",
                values.get("stop_reason") or "",
                bool(said.get("enforced")),
                str(said.get("how") or ""),
            )
        return GenerationResult(**values)

    # --- recording ------------------------------------------------------------------------

    def add(
        self,
        result: GenerationResult,
        item: int | None = None,
        error: BaseException | None = None,
        at_once: bool = True,
    ) -> None:
        """Log `result` (the run of `item` in an --over list); written now, or with
        `at_once=False` in the next batch of writes (`flush`). `error`: the failure that
        ended it part-way."""
        if self.log is None:
            return
        row = self._row(item, result.versions)
        for name, column in _COLUMN_OF.items():
            row[column] = getattr(result, name)
        if error is not None:
            row["error"] = _message(error)
        row["request_key"] = self._key(result.seed, result.rendered_prompt)
        row["result"] = {name: getattr(result, name) for name in _result_fields(type(result))}
        self._write(row, 0 if item is None else item, at_once)

    def failed(self, rendered: Rendered, error: BaseException, seed: int | None) -> None:
        """Log a run that failed before any text: what was asked, and why it failed."""
        if self.log is None:
            return
        row = self._row(None, None)
        row.update(
            prompt=rendered.request.text,
            rendered=rendered.shown,
            seed=seed,
            stop_reason="error",
            error=_message(error),
            request_key=self._key(seed, rendered.shown),
        )
        self._write(row, 0, True)

    def add_score(
        self,
        result: ScoreResult | ChoiceScores,
        item: int | None,
        versions: dict[str, str],
        at_once: bool = True,
    ) -> None:
        """Log one scored item: a text's figures, or a question's choices with theirs.
        A score has no request key: it is never answered from the log (`--reuse`), and a
        generation never takes it for an answer."""
        if self.log is None:
            return
        row = self._row(item, versions)
        row.update(greedy=None, request_key=None, result=_score_json(result))
        if isinstance(result, ChoiceScores):
            first = result.scores[0]
            row.update(
                prompt=result.context,
                rendered=first.context_shown,
                answer=result.best,
                prompt_tokens=first.context_tokens,
                seconds=math.fsum(s.seconds for s in result.scores),
            )
        else:
            row.update(
                prompt=result.text,
                rendered=result.context_shown + result.text,
                prompt_tokens=result.context_tokens,
                seconds=result.seconds,
            )
        self._write(row, 0 if item is None else item, at_once)

    def _provenance(self, versions: dict[str, str] | None) -> runlog.Json:
        """The model's facts and the library versions, serialized once per call."""
        key = json.dumps(versions, sort_keys=True)
        made = self.shared["provenance"].get(key)
        if made is None:
            provenance = dict(self.facts.provenance, versions=versions)
            if self.cell is None and sys.argv and sys.argv[0].endswith(".py"):
                provenance["script"] = sys.argv[0]
            made = self.shared["provenance"][key] = runlog.Json(runlog.dumps(provenance))
        return made

    def _row(self, item: int | None, versions: dict[str, str] | None) -> dict[str, Any]:
        facts, cell, origin = self.facts, self.cell, self.origin
        return {
            "time": runlog.now(),
            "kind": self.kind,
            "model": facts.model,
            "alias": origin.alias,
            "model_hash": facts.model_hash,
            "engine": facts.engine,
            "dtype": facts.dtype,
            "quantization": facts.quantization,
            "device": facts.device,
            "server": facts.server,
            "greedy": self.settings.greedy,
            "cell": cell.text if cell else None,
            "notebook": cell.notebook if cell else None,
            "cell_id": cell.id if cell else None,
            "execution_count": cell.execution_count if cell else None,
            "conversation": origin.conversation,
            "turn": origin.turn,
            "item": item,
            "settings": self.shared["settings"],
            "provenance": self._provenance(versions),
        }

    def _write(self, row: dict[str, Any], item: int, at_once: bool) -> None:
        assert self.log is not None
        self.log.add(
            row,
            on_id=lambda row_id: self.ids.__setitem__(item, row_id),
            at_once=at_once,
            secrets=self.shared["secrets"],
        )

    def flush(self) -> None:
        if self.log is not None:
            self.log.flush()

    def with_id(self, result: GenerationResult, item: int = 0) -> GenerationResult:
        """`result` carrying the id of its row (`%llm_log --show ID`), once written."""
        row_id = self.ids.get(item)
        return result if row_id is None else replace(result, run_id=row_id)


def _result_fields(kind: type) -> tuple[str, ...]:
    """The fields of a result class that go into the row's `result` JSON."""
    found = _RESULT_FIELDS.get(kind)
    if found is None:
        found = _RESULT_FIELDS[kind] = tuple(
            f.name
            for f in fields(kind)
            if f.name not in _COLUMN_OF and f.name not in _NOT_IN_RESULT | _NOT_VALUES
        )
    return found


_RESULT_FIELDS: dict[type, tuple[str, ...]] = {}


def _scored_json(scored: ScoreResult) -> dict[str, Any]:
    """One scored text's figures and tokens, as plain values."""
    return {
        "text": scored.text,
        "context": scored.context,
        "context_tokens": scored.context_tokens,
        "logprob": scored.logprob,
        "token_count": scored.token_count,
        "mean_logprob": scored.mean_logprob,
        "perplexity": scored.perplexity,
        "greedy": scored.greedy,
        "templated": scored.templated,
        "distribution": scored.distribution,
        "seconds": scored.seconds,
        "notes": list(scored.notes),
        "label": scored.label,
        "tokens": [runlog.jsonable(t) for t in scored.tokens],
    }


def _score_json(result: ScoreResult | ChoiceScores) -> dict[str, Any]:
    """A score's `result` JSON: its figures (and a question's, per choice: the
    probabilities, the likeliest and lm-evaluation-harness's acc / acc_norm)."""
    if isinstance(result, ScoreResult):
        return _scored_json(result)
    answer = result.answer
    return {
        "question": result.context,
        "choices": list(result.choices),
        "probabilities": result.probabilities,
        "logprobs": result.logprobs,
        "logprob_per_char": result.per_char,
        "logprob_per_byte": result.per_byte,
        "best": result.best,
        "best_norm": result.best_norm,
        "best_bytes": result.best_bytes,
        "answer": answer,
        "answer_text": None if answer is None else result.choices[answer],
        "acc": result.acc,
        "acc_norm": result.acc_norm,
        "scores": [_scored_json(s) for s in result.scores],
    }


def _message(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text[:_ERROR_CHARS]
