"""sent promote: register a trained model, and make it the champion only when it wins.

Reads: the candidate, an MLflow run with a model, its LoggedModel "model" (or, logged by an older
sent, a "model" artifact folder) (by default the newest finished run
tagged sent.kind=train in cfg.mlflow.experiment; or --run-id; or a model folder, --model-dir,
first logged to a run of its own) and its test_* metrics, which `sent eval` logs to that run;
the registered model's alias (cfg.promote.alias) and its history tag.
Writes: a version of cfg.mlflow.registered_model tagged with the test metrics, weights_sha256
(hashed from the files actually registered) and run_id; the alias, when the candidate wins by
more than cfg.promote.min_improvement on cfg.promote.metric (or with --force); the history.

One run registers one version: promoting a run again reuses its version (its metric tags are
refreshed, its weights must still hash the same). A folder whose weights a version already
holds reuses that version too.

Consistency. The registry has no transactions and a change is several writes. The alias is
the truth (serve follows it); the registered-model tag `sent.history.<alias>` is a JSON list of
the versions that held it, oldest first, its last entry the alias. A change
  1. writes its intent, the tag `sent.pending.<alias>` = {"alias": V, "history": [...]},
  2. moves the alias, 3. writes the history, 4. deletes the intent,
  5. re-reads alias and history: anything but what it wrote means someone changed the registry
     meanwhile, so it starts again from a fresh read (and decides again, against the new
     champion).
Every change first repairs what it reads (reconcile): a history that does not end with the
alias is rolled forward from the intent, cut back to the alias, or extended with it. Whoever
computes the repair gets the same answer, so racing repairs agree. On a local SQLite store
the whole register-decide-write sequence runs under a file lock as well, so promoters take
turns; against a tracking server the verify step above is what detects a racer.

Longer than 400 lines because the decision and the consistency protocol that protects it (intent,
move, history, verify, reconcile) read best side by side; each piece is a small function.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentiment_cli import artifacts, model, pyfunc, registry
from sentiment_cli.registry import MODEL_ARTIFACT, RegistryError

if TYPE_CHECKING:
    from sentiment_cli.config import Config

EXIT_PROMOTED = 0  # the candidate is the champion now (promoted, already was, or rolled back)
EXIT_KEPT = 3  # the champion stays; the candidate did not win
MAX_ATTEMPTS = 8  # compare-and-verify rounds before giving up on a registry that keeps changing
MAX_HISTORY = 200  # entries kept in the history tag
TAG_SHA = "weights_sha256"
TAG_RUN = "run_id"
_LOWER_IS_BETTER = ("loss", "error", "perplexity")


class PromoteError(RegistryError):
    """The promotion cannot go ahead (no candidate, no score, a changed artifact, ...)."""


def history_tag(alias: str) -> str:
    return f"sent.history.{alias}"


def pending_tag(alias: str) -> str:
    return f"sent.pending.{alias}"


def lower_is_better(metric: str) -> bool:
    return metric.lower().endswith(_LOWER_IS_BETTER)


def wins(candidate: float, champion: float, min_improvement: float, metric: str) -> bool:
    """Strictly better by more than min_improvement (a tie keeps the champion)."""
    gain = champion - candidate if lower_is_better(metric) else candidate - champion
    return gain > min_improvement + 1e-12  # 0.85 - 0.80 is 0.05000000000000004, not "more"


@dataclass
class Outcome:
    action: str  # promoted | kept | already | rolled_back
    name: str
    alias: str
    version: str | None  # the candidate; for a rollback, the new champion
    previous: str | None  # the champion before
    metric: str
    score: float | None = None
    previous_score: float | None = None
    forced: bool = False
    min_improvement: float = 0.0
    history: list[str] = field(default_factory=list)
    rolled_back_at: str | None = None  # kept because the candidate was rolled back then

    @property
    def exit_code(self) -> int:
        return EXIT_KEPT if self.action == "kept" else EXIT_PROMOTED

    def summary(self) -> str:
        m, at = self.metric, f"@{self.alias}"
        cand = f"{self.name} version {self.version}"
        if self.action == "rolled_back":
            return (f"rolled back: {at} is {cand} again (was version {self.previous}); "
                    f"history {' → '.join(self.history)}")
        if self.action == "already":
            return f"{cand} is already {at} ({m} {_fmt(self.score)}); nothing to change"
        if self.action == "kept" and self.rolled_back_at:
            return (f"kept: version {self.previous} stays {at}: candidate version {self.version} "
                    f"was rolled back at {self.rolled_back_at}; promote it again only with --force")
        if self.action == "kept":
            direction = "below" if lower_is_better(m) else "above"
            return (f"kept: version {self.previous} stays {at}: candidate version {self.version} "
                    f"{m} {_fmt(self.score)}, champion {_fmt(self.previous_score)} (the candidate "
                    f"must be {direction} it by more than {self.min_improvement:g})")
        if self.previous is None:
            return f"promoted: {cand} is {at} ({m} {_fmt(self.score)}; there was no champion)"
        how = "promoted (--force)" if self.forced else "promoted"
        return (f"{how}: {cand} is {at} ({m} {_fmt(self.score)}), replacing version "
                f"{self.previous} ({m} {_fmt(self.previous_score)})")


def _fmt(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.6g}"


def _finite(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def rolled_back_at(mv) -> str | None:
    """When the alias was last taken away from this version by a rollback, unless it has been
    promoted again since."""
    tags = mv.tags or {}
    back = tags.get("sent.rolled_back_at")
    return back if back and back >= tags.get("sent.promoted_at", "") else None


def _say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- the champion's state


@dataclass
class State:
    champion: str | None  # where the alias points
    history: list[str]  # reconciled: ends with the champion when there is one
    stored: list[str]  # the history tag as read
    pending: dict | None  # an unfinished change's intent


def _versions(raw: Any) -> list[str]:
    return [str(v) for v in raw] if isinstance(raw, list) else []


def _load_json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def reconcile(champion: str | None, history: list[str], pending: dict | None) -> list[str]:
    """The history that agrees with where the alias points (the alias is the truth)."""
    if champion is None or (history and history[-1] == champion):
        return history
    if pending and str(pending.get("alias")) == champion:
        intended = _versions(pending.get("history"))
        if intended and intended[-1] == champion:  # a change that stopped after moving the alias
            return intended
    if champion in history:  # moved back (by hand, or a rollback that stopped half-way)
        return history[:len(history) - history[::-1].index(champion)]
    return history + [champion]  # moved by hand, or by a racer whose history was overwritten


def read_state(cfg: Config, name: str, alias: str) -> State:
    rm = registry.registered_model(cfg, name)
    if rm is None:
        return State(None, [], [], None)
    aliases = {str(k): str(v) for k, v in (rm.aliases or {}).items()}
    tags = rm.tags or {}
    stored = _versions(_load_json(tags.get(history_tag(alias))))
    pending = _load_json(tags.get(pending_tag(alias)))
    pending = pending if isinstance(pending, dict) else None
    champion = aliases.get(alias)
    return State(champion, reconcile(champion, stored, pending), stored, pending)


def _repaired_state(cfg: Config, name: str, alias: str) -> State:
    """read_state, writing the reconciled history back when it differs."""
    state = read_state(cfg, name, alias)
    if state.history != state.stored:
        registry.set_model_tag(cfg, name, history_tag(alias), _dump(state.history))
        _say(f"note: repaired the @{alias} history of {name}: {_dump(state.stored)} "
             f"became {_dump(state.history)} to agree with the alias")
    if state.pending is not None:
        registry.delete_model_tag(cfg, name, pending_tag(alias))
    return state


def _chain(history: list[str]) -> str:
    return " → ".join(history) if history else "empty"


def _dump(history: list[str]) -> str:
    return json.dumps([int(v) if v.isdigit() else v for v in history[-MAX_HISTORY:]])


def _move(cfg: Config, name: str, alias: str, version: str, history: list[str]) -> bool:
    """Point the alias at version with this history; True when a re-read shows exactly that."""
    history = history[-MAX_HISTORY:]
    registry.set_model_tag(cfg, name, pending_tag(alias),
                           json.dumps({"alias": version, "history": json.loads(_dump(history))}))
    registry.set_alias(cfg, name, alias, version)
    registry.set_model_tag(cfg, name, history_tag(alias), _dump(history))
    registry.delete_model_tag(cfg, name, pending_tag(alias))
    after = read_state(cfg, name, alias)
    return after.champion == version and after.stored == history


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))


def _gave_up(name: str) -> PromoteError:
    return PromoteError(f"{name} kept changing while this change was verified ({MAX_ATTEMPTS} "
                        "tries; another promoter?); `sent promote --list` shows where it stands")


# ---------------------------------------------------------------- the candidate


def _numeric(items: dict) -> dict[str, float]:
    out = {}
    for k, v in items.items():
        x = None if isinstance(v, bool) else _finite(v) if isinstance(v, int | float) else None
        if x is not None:
            out[str(k)] = x
    return out


def _folder_metrics(cfg: Config, meta: dict, sha: str) -> dict[str, float]:
    """Scores known to belong to exactly these weights: sent.json's training metrics, the metrics
    of the run that trained them (test_* once evaluated), metrics/eval.json if it evaluated them."""
    out = _numeric(meta.get("metrics") or {})
    source = meta.get("mlflow_run_id")
    if source:
        try:
            run = registry.get_run(cfg, source)
        except RegistryError:
            run = None  # trained against another store
        if run is not None and run.data.tags.get(TAG_SHA) == sha:
            out.update(_numeric(run.data.metrics))
    found = artifacts.eval_for(cfg, sha)
    if found is not None:
        out.update(_numeric(artifacts.scores(found[0])))
    return out


def _run_for_folder(cfg: Config, folder: Path, name: str):
    """The run holding this folder's weights: an existing version's, or a new run."""
    model.check_folder(folder)  # the same rules as loading: safetensors, no remote code
    meta = model.read_meta(folder)
    sha = model.verify_weights(folder, meta.get(TAG_SHA), "its sent.json", error=PromoteError,
                               action="the folder changed after it was saved")
    if registry.registered_model(cfg, name) is not None:
        for mv in registry.search_versions(cfg, name, tags={TAG_SHA: sha}):
            try:
                run = registry.get_run(cfg, mv.run_id)
            except RegistryError:
                continue
            _say(f"{folder} holds the weights of {name} version {mv.version} (run {mv.run_id})")
            return run
    metrics = _folder_metrics(cfg, meta, sha)
    tags = {"sent.kind": "register", "sent.model_dir": str(folder.resolve()), TAG_SHA: sha}
    if meta.get("mlflow_run_id"):
        tags["sent.source_run_id"] = str(meta["mlflow_run_id"])
    with registry.run(cfg, run_name=f"register-{folder.resolve().name}", tags=tags) as active:
        run_id = active.info.run_id
        if metrics:
            registry.log_metrics(metrics)
        registry.log_model_folder(folder, run_id)
    _say(f"logged {folder} to MLflow run {run_id}")
    return registry.get_run(cfg, run_id)


def _candidate_run(cfg: Config, run_id: str | None):
    if run_id:
        run = registry.get_run(cfg, run_id)
        if not registry.has_model_artifact(cfg, run_id):
            raise PromoteError(f"run {run_id} has no '{MODEL_ARTIFACT}' artifact to register "
                               "(trained with mlflow.log_model=false?); try --model-dir")
        if run.info.status != "FINISHED":
            _say(f"note: run {run_id} is {run.info.status}, not FINISHED")
        return run
    run = registry.latest_train_run(cfg)
    if run is None:
        raise PromoteError(f"no finished `sent train` run with a model artifact in experiment "
                           f"{cfg.mlflow.experiment!r} at {registry.tracking_uri(cfg)}; run "
                           "`sent train` first, or pass --run-id or --model-dir")
    return run


def _registered_hash(cfg: Config, run) -> str:
    """sha256 of the weights as stored in the artifact store, checked against what training
    recorded (sent.json inside the folder, the run's weights_sha256 tag)."""
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory(prefix="sent-promote-") as tmp:
        # exactly what a version will point at: an MLflow model (MLmodel + artifacts/model/), or
        # from an older sent the plain folder
        source = registry.model_source(cfg, run)
        folder = pyfunc.model_folder(registry.download(cfg, source, tmp))
        if not (folder / "config.json").is_file() or not list(folder.glob("*.safetensors")):
            raise PromoteError(f"run {run_id}'s '{MODEL_ARTIFACT}' artifact is not a model folder "
                               "(config.json and .safetensors weights)")
        recorded = (("its sent.json", model.read_meta(folder).get(TAG_SHA)),
                    ("the run's weights_sha256 tag", run.data.tags.get(TAG_SHA)))
        for what, expected in recorded:
            sha = model.verify_weights(folder, expected, f"{what} (run {run_id})", error=PromoteError,
                                       action="refusing a changed upload")
    return sha


def version_tags(metrics: dict[str, float], metric: str, sha: str, run_id: str) -> dict[str, str]:
    scores = {k: v for k, v in metrics.items() if k.startswith("test_") or k == metric}
    return {**{k: repr(float(v)) for k, v in sorted(scores.items())}, TAG_SHA: sha, TAG_RUN: run_id}


def _register(cfg: Config, name: str, run, tags: dict[str, str]):
    """The version for this run: the existing one (tags refreshed) or a new one."""
    run_id, source = run.info.run_id, registry.model_source(cfg, run)
    same = [mv for mv in registry.search_versions(cfg, name, run_id=run_id)
            if mv.source.rstrip("/") == source]
    if not same:
        mv = registry.create_version(cfg, name, run, tags)
        _say(f"registered run {run_id} as {name} version {mv.version} "
             f"(weights sha256 {tags[TAG_SHA][:12]}…)")
        return mv
    mv = same[0]
    old = (mv.tags or {}).get(TAG_SHA)
    if old and old != tags[TAG_SHA]:
        raise PromoteError(f"run {run_id} was registered as version {mv.version} with weights "
                           f"sha256 {old[:12]}…, but its artifact now hashes to "
                           f"{tags[TAG_SHA][:12]}…; refusing: the artifact changed after "
                           "registration")
    changed = {k: v for k, v in tags.items() if (mv.tags or {}).get(k) != v}
    if changed:
        registry.set_version_tags(cfg, name, mv.version, changed)
    _say(f"run {run_id} is already {name} version {mv.version}; reusing it"
         + (f" (updated {', '.join(sorted(changed))})" if changed else ""))
    return registry.model_version(cfg, name, mv.version) or mv


def score_of(cfg: Config, mv, metric: str) -> float | None:
    """A version's score: its tag, else its run's metric (a version registered by hand)."""
    if mv is None:
        return None
    tagged = _finite((mv.tags or {}).get(metric))
    if tagged is not None or not mv.run_id:
        return tagged
    try:
        return _finite(registry.get_run(cfg, mv.run_id).data.metrics.get(metric))
    except RegistryError:
        return None


# ---------------------------------------------------------------- the steps


def run(cfg: Config, run_id: str | None = None, model_dir: str | Path | None = None,
        force: bool = False) -> Outcome:
    """Register the candidate and move the alias if it wins; returns what happened."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    name, alias, metric = cfg.mlflow.registered_model, cfg.promote.alias, cfg.promote.metric
    if model_dir is not None:
        cand = _run_for_folder(cfg, Path(model_dir), name)
    else:
        cand = _candidate_run(cfg, run_id)
    cand_id = cand.info.run_id
    metrics = _numeric(dict(cand.data.metrics))
    if metric not in metrics and not force:
        known = ", ".join(sorted(metrics)) or "none"
        raise PromoteError(f"candidate run {cand_id} has no {metric!r} metric (it has: {known}); "
                           "run `sent eval` first, which logs test_* metrics to the training run")
    tags = version_tags(metrics, metric, _registered_hash(cfg, cand), cand_id)
    with registry.registry_lock(cfg):
        registry.registered_model(cfg, name, create=True)
        mv = _register(cfg, name, cand, tags)
        return _promote(cfg, name, alias, mv, metric, force)


def _promote(cfg: Config, name: str, alias: str, mv, metric: str, force: bool) -> Outcome:
    version = str(mv.version)
    score = score_of(cfg, mv, metric)
    if score is None and not force:
        raise PromoteError(f"{name} version {version} has no {metric!r} score; run `sent eval` "
                           "first, or use --force")
    base = {"name": name, "alias": alias, "version": version, "metric": metric, "score": score,
            "min_improvement": float(cfg.promote.min_improvement)}
    for attempt in range(MAX_ATTEMPTS):
        state = _repaired_state(cfg, name, alias)
        champion = state.champion
        if champion == version:
            return Outcome("already", previous=champion, previous_score=score,
                           history=state.history, **base)
        champion_score = score_of(cfg, registry.model_version(cfg, name, champion), metric) \
            if champion else None
        # a version taken out of service by a rollback is not put back by the next routine run
        back = rolled_back_at(mv)
        if back and not force:
            return Outcome("kept", previous=champion, previous_score=champion_score,
                           history=state.history, rolled_back_at=back, **base)
        if champion and not force:
            if champion_score is None:
                raise PromoteError(f"the champion, {name} version {champion}, has no {metric!r} "
                                   "score to compare with; compare by hand, then use --force")
            if not wins(score, champion_score, base["min_improvement"], metric):
                return Outcome("kept", previous=champion, previous_score=champion_score,
                               history=state.history, **base)
        history = state.history + [version]
        if _move(cfg, name, alias, version, history):
            registry.set_version_tags(cfg, name, version, {
                "sent.promoted_at": _now(), "sent.previous_champion": champion or "none"})
            return Outcome("promoted", previous=champion, previous_score=champion_score,
                           forced=force and champion is not None, history=history[-MAX_HISTORY:],
                           **base)
        _say(f"note: {name} changed during the promotion; deciding again")
        _backoff(attempt)
    raise _gave_up(name)


def rollback(cfg: Config) -> Outcome:
    """Point the alias back at the previous champion; repeated, it walks further back."""
    name, alias, metric = cfg.mlflow.registered_model, cfg.promote.alias, cfg.promote.metric
    with registry.registry_lock(cfg):
        if registry.registered_model(cfg, name) is None:
            raise PromoteError(f"no registered model {name!r} at {registry.tracking_uri(cfg)}; "
                               "nothing to roll back")
        for attempt in range(MAX_ATTEMPTS):
            state = _repaired_state(cfg, name, alias)
            if state.champion is None:
                raise PromoteError(f"{name} has no @{alias}; nothing to roll back")
            history = list(state.history)
            current = history.pop()
            while history and registry.model_version(cfg, name, history[-1]) is None:
                _say(f"note: skipping version {history[-1]}: it was deleted")
                history.pop()
            if not history:
                raise PromoteError(f"version {current} is the first @{alias} of {name} on record; "
                                   "there is no previous champion to roll back to")
            target = history[-1]
            if _move(cfg, name, alias, target, history):
                registry.set_version_tags(cfg, name, current, {"sent.rolled_back_at": _now()})
                target_mv = registry.model_version(cfg, name, target)
                return Outcome("rolled_back", name=name, alias=alias, version=target,
                               previous=current, metric=metric,
                               score=score_of(cfg, target_mv, metric), history=history)
            _say(f"note: {name} changed during the rollback; trying again")
            _backoff(attempt)
        raise _gave_up(name)


def list_versions(cfg: Config):
    """A rich Table of the registered model's versions: scores, aliases, created, run."""
    from rich.table import Table

    name, alias, metric = cfg.mlflow.registered_model, cfg.promote.alias, cfg.promote.metric
    rm = registry.registered_model(cfg, name)
    if rm is None:
        raise PromoteError(f"no registered model {name!r} at {registry.tracking_uri(cfg)}; "
                           "`sent promote` creates it")
    by_version: dict[str, list[str]] = {}
    for a, v in (rm.aliases or {}).items():
        by_version.setdefault(str(v), []).append(f"@{a}")
    state = read_state(cfg, name, alias)
    extra = [m for m in ("test_accuracy", "test_f1") if m != metric]
    table = Table(title=f"{name} at {registry.tracking_uri(cfg)}",
                  caption=f"@{alias} history, oldest first: {_chain(state.history)}")
    for col in ("version", "aliases", metric, *extra, "created (UTC)", "run id", "weights sha256"):
        table.add_column(col, overflow="fold", no_wrap=col in ("run id", "version"))
    for mv in reversed(registry.search_versions(cfg, name)):
        tags = mv.tags or {}
        created = datetime.fromtimestamp(int(mv.creation_timestamp) / 1000, UTC)
        table.add_row(str(mv.version), " ".join(sorted(by_version.get(str(mv.version), []))),
                      *[_fmt(_finite(tags.get(m))) for m in (metric, *extra)],
                      created.strftime("%Y-%m-%d %H:%M:%S"), mv.run_id or "",
                      (tags.get(TAG_SHA) or "")[:12])
    return table
