"""The one cached-load path every engine goes through: plan, cache hit or miss, the fit
check and the cache's budget, the load, the alias, the card, and a failure explained with
the cache left as it was.

An engine says what is particular to it (engines/registry.py: its `Loader`): the cache key
and the size, read before any weights are; the load itself; its card."""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace

from . import adapters, errors, hardware, quiet
from .cache import (
    MODEL_CACHE,
    LoadedModel,
    Released,
    clear_frames_of,
    handle_name,
    release_memory,
)
from .engines import registry
from .engines.base import Card, Loader, LoadOptions, LoadReport, Plan, Progress
from .errors import LoadError
from .sources import hub
from .sources.discovery import LoadedEntry, quote
from .sources.sizing import Estimate, check_fit
from .units import format_bytes


def load_with_card(
    options: LoadOptions, progress: Progress | None = None
) -> tuple[LoadedModel, Card]:
    """The cached model for `options` (loaded when the cache does not hold it), and its card.

    A failure raises LoadError (the original chained as __cause__), leaves the cache as it
    was and keeps no reference to a half-loaded model."""
    options.check()
    if options.quiet:
        progress = None
    last = MODEL_CACHE.last
    plan: Plan | None = None
    try:
        with quiet.silenced() if options.quiet else contextlib.nullcontext():
            started = time.perf_counter()
            loader = registry.loader(options)
            plan = loader.plan(options, progress)
            return _cached_or_loaded(loader, plan, options, progress, started)
    except BaseException as e:
        MODEL_CACHE.last = last
        failure = _explained(e, options, plan)
        if failure is e:
            raise
        raise failure from e


def _cached_or_loaded(
    loader: Loader, plan: Plan, options: LoadOptions, progress: Progress | None, started: float
) -> tuple[LoadedModel, Card]:
    entry = None if options.reload else MODEL_CACHE.get(plan.key)
    state, fit = "cached", None
    notes: list[str] = list(plan.notes)
    if entry is None:
        state = "reloaded" if options.reload and MODEL_CACHE.peek(plan.key) else "new"
        fit, room = make_room(plan, options, progress)  # raises when it won't fit
        notes += room
        loaded = loader.load(plan, options, progress)
        notes += loaded.notes
        entry = LoadedModel(plan.key, loaded.model, loaded.tokenizer, loaded.info)
        # A server's settled request (the URL that answered), else the one made here.
        entry.options = replace(
            loaded.options or options, alias=None, reload=False, force=False, adapters=()
        )
        entry.engine = loaded.engine(entry)
        del loaded
        notes += [budget_note(r) for r in MODEL_CACHE.put(entry)]
    if options.alias:
        before = MODEL_CACHE.aliased(options.alias)
        MODEL_CACHE.alias(entry, options.alias)
        if before is not None and before is not entry:
            notes.append(_alias_moved(options.alias, before))
    if options.adapters:
        notes += _with_adapters(entry, options, state, progress)
    seconds = time.perf_counter() - started if state == "cached" else entry.info.load_seconds
    report = LoadReport(
        state, seconds, fit, tuple(notes), len(MODEL_CACHE), MODEL_CACHE.total_bytes()
    )
    return entry, loader.card(entry, report)


def _alias_moved(alias: str, before: LoadedModel) -> str:
    """The alias now names this model: the one it named stays loaded, said with the name
    that still reaches it."""
    name = handle_name(before)
    reach = (
        f"%llm_unload {name} frees it"
        if name is not None
        else f"{loaded_line(before)} --as NAME names it again"
    )
    return (
        f"--as {alias} named {before.name} ({before.info.held_as}) until now; that model "
        f"stays loaded ({format_bytes(before.memory_bytes)}): {reach}"
    )


def unload_command(entry: LoadedModel) -> str:
    """The command that unloads `entry`, naming it so that it means this model alone."""
    name = handle_name(entry)
    if name is not None:
        return f"%llm_unload {name}"
    return f"{loaded_line(entry)} --as NAME, then %llm_unload NAME"


def _with_adapters(
    entry: LoadedModel, options: LoadOptions, state: str, progress: Progress | None
) -> list[str]:
    """Put `--adapter`'s adapters on the model (the first becomes the one its name alone
    means). On failure a model this call loaded is unloaded again: the cache as it was."""
    if progress:
        progress(f"putting adapter{'s' if len(options.adapters) > 1 else ''} on {entry.name}…")
    try:
        attached = adapters.attach(entry, options.adapters, default=options.adapters[0][0])
    except BaseException:
        if state != "cached":
            MODEL_CACHE.unload([entry])
        raise
    return [budget_note(r) for r in attached.released]


def _explained(e: BaseException, options: LoadOptions, plan: Plan | None) -> BaseException:
    """The exception to raise for a failed load: a LoadError explaining `e`, or `e`
    itself when it already explains itself (an LLMError) or is no error (Ctrl-C).

    Either way the frames of e's traceback are cleared first, and the memory released:
    they hold the half-built model as a local, and the exception outlives the cell
    (`sys.last_value`, `%llm_tb`)."""
    clear_frames_of(e)
    release_memory()
    if isinstance(e, errors.LLMError) or not isinstance(e, Exception):
        return e
    from .sources.facts import failure_context

    source = plan.source if plan is not None else None
    dtype = plan.key.dtype if plan is not None and plan.key.dtype else options.dtype
    context = failure_context(
        options.model or "", source, dtype, options.device_map, options.revision
    )
    context["loaded"] = [(entry.info.name, entry.memory_bytes) for entry in MODEL_CACHE.entries()]
    return errors.diagnose(e, context, errors.LOAD)


# --- before loading: size and room ------------------------------------------------------


def make_room(
    plan: Plan, options: LoadOptions, progress: Progress | None
) -> tuple[str | None, list[str]]:
    """The fit verdict for the card, after making room within the cache's budget. Raises
    LoadError, before anything is unloaded or read, when the model will not fit (unless
    `options.force`)."""
    est = plan.estimate
    victims = MODEL_CACHE.over_budget(
        est.bytes if est else 0, adding=plan.key not in MODEL_CACHE, keep=MODEL_CACHE.peek(plan.key)
    )
    verdict = plan.unchecked
    if est is not None:
        target = plan.target or hardware.target_kind(hardware.probe(), options.device_map)
        reclaim: dict[str, int] = {}
        for v in victims:  # what the budget will unload first counts as free
            device = v.info.device.split(",")[0].strip()
            reclaim[device] = reclaim.get(device, 0) + v.memory_bytes
        fit = check_fit(
            est,
            target,
            hardware.free_ram_bytes(),
            hardware.free_gpu_bytes() if target == "cuda" else None,
            options.device_map,
            reclaim,
        )
        verdict = fit.message
        if not fit.fits:
            if not options.force:
                raise LoadError(
                    f"{plan.name}: will not fit in memory",
                    fit.message,
                    _fit_fixes(est, target, options, victims),
                )
            verdict += " — loading anyway (--force)"
    notes = []
    if victims:
        if progress:
            names = ", ".join(v.name for v in victims)
            progress(f"unloading {names} to stay within the budget…")
        notes.append(budget_note(MODEL_CACHE.unload(victims, by_budget=True)))
    return verdict, notes


def _fit_fixes(
    est: Estimate, target: str, options: LoadOptions, victims: list[LoadedModel]
) -> list[str]:
    fixes = []
    if est.dtype == "float32":
        fixes.append(f"--dtype bfloat16 halves it to {format_bytes(est.bytes // 2)}")
    others = [e for e in MODEL_CACHE.entries() if e not in victims]
    if others:
        each = ", ".join(
            f"{unload_command(e)} frees {format_bytes(e.memory_bytes)}" for e in others
        )
        fixes.append(each + (" (or --all)" if len(others) > 1 else ""))
    if target == "cuda" and options.device_map != "auto":
        fixes.append(
            "--device-map auto offloads the layers that do not fit to cpu (slower generation)"
        )
    else:
        fixes.append(
            "--quantize nf4 loads the linear layers in 4 bits (bitsandbytes), or a smaller model"
        )
    fixes.append("--force loads anyway (the system may swap, or kill the kernel)")
    return fixes


def budget_note(released: Released) -> str:
    """What the budget unloaded to make room, said on the card of the load that needed it."""
    names = ", ".join(
        f"{aliases[0] if aliases else n} ({d}, {format_bytes(b)})"
        for n, aliases, b, d in released.models
    )
    count = MODEL_CACHE.max_models
    limits = [
        f"{count} model{'s' if count != 1 else ''}" if count else "",
        format_bytes(MODEL_CACHE.memory_budget) if MODEL_CACHE.memory_budget else "",
    ]
    budget = " and ".join(x for x in limits if x)
    note = f"unloaded {names}, least recently used, to stay within the budget of {budget}"
    if not released.freed:
        note += " — but it is still in memory" + (
            f", held by {', '.join(released.held_by)}" if released.held_by else ""
        )
    return note


# --- what the cache holds, as `%llm_load` without MODEL lists it ------------------------


def loaded_entries(defaults: LoadOptions | None = None) -> tuple[LoadedEntry, ...]:
    """The models in the kernel's cache, the most recently used first, each with the line
    that hits it again (`defaults`: what a line's missing flags stand for, the notebook's
    `LLMMagics` defaults)."""
    entries = sorted(MODEL_CACHE.entries(), key=lambda e: -e.last_used)
    return tuple(
        LoadedEntry(
            e.name,
            tuple(sorted(e.aliases)),
            e.info.held_as,
            e.info.device,
            e.memory_bytes,
            loaded_line(e, defaults),
        )
        for e in entries
    )


def loaded_line(entry: LoadedModel, defaults: LoadOptions | None = None) -> str:
    """The `%llm_load` line that hits this cache entry again: the request that made it
    (server, engine, dtype as chosen, device map, quantization, revision...), with its
    alias. A flag is left out where the line's default gives the same."""
    defaults = defaults or LoadOptions()
    made = entry.options or LoadOptions(model=entry.name)
    words = ["%llm_load", quote(made.model or entry.name)]

    def flag(name: str, value: object) -> None:
        words.extend([name, quote(str(value))])

    if made.server:
        flag("--server", made.server)
    elif made.engine != defaults.engine:
        flag("--engine", made.engine)
    if entry.key.dtype:  # the dtype chosen, where the engine chooses one
        flag("--dtype", entry.key.dtype)
    if isinstance(made.device_map, str) and made.device_map != defaults.device_map:
        flag("--device-map", made.device_map)
    if made.max_memory:
        flag("--max-memory", ",".join(f"{k}={v}" for k, v in made.max_memory.items()))
    if made.quantize:
        flag("--quantize", made.quantize)
    if made.revision:
        flag("--revision", made.revision)
    elif entry.info.kind == "hub" and entry.info.revision:
        main = hub.cached_snapshot(entry.name)
        if main is None or main.name != entry.info.revision:  # loaded at another revision
            flag("--revision", entry.info.revision)
    if made.trust_remote_code:
        words.append("--trust-remote-code")
    if made.api_key_env and made.api_key_env != defaults.api_key_env:
        flag("--api-key-env", made.api_key_env)
    if entry.aliases:
        flag("--as", min(entry.aliases))
    return " ".join(words)
