"""sent promote against a real MLflow SQLite registry in tmp_path: decisions, exit codes,
rollback, listing, integrity, and promoters racing each other in separate processes."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
import registry_fixtures
from registry_fixtures import NAME, champion_state, promote_cli

from sentiment_cli import model, promote, registry
from sentiment_cli.promote import PromoteError, reconcile

# the shared fixtures, used by name
empty_store_db, store, tiny_model = (registry_fixtures.empty_store_db, registry_fixtures.store,
                                     registry_fixtures.tiny_model)


def one_line_error(result) -> str:
    """The error line; fails on a traceback or a message of several lines."""
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if " INFO " not in line]  # MLflow's log
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def version_of(cfg, run_id: str) -> str:
    (mv,) = registry.search_versions(cfg, NAME, run_id=run_id)
    return str(mv.version)


# ---------------------------------------------------------------- decisions


def test_first_model_becomes_champion_with_metric_hash_and_run_tags(store):
    rid = store.train_run(0.80)
    result = promote_cli()
    assert result.exit_code == 0, result.output
    assert "promoted" in result.stdout and "there was no champion" in result.stdout
    cfg = store.cfg()
    assert champion_state(cfg) == ("1", ["1"])
    mv = registry.get_version(cfg, NAME, version="1")
    assert mv.run_id == rid
    assert mv.tags["run_id"] == rid
    assert float(mv.tags["test_accuracy"]) == pytest.approx(0.80)
    assert float(mv.tags["test_f1"]) == pytest.approx(0.79)
    assert "val_accuracy" not in mv.tags  # evaluation scores only
    assert mv.tags["weights_sha256"] == model.weights_sha256(store.folder_of(rid))
    assert mv.tags["sent.previous_champion"] == "none"
    assert not any(a.startswith("sent.pending") for a in registry.registered_model(cfg, NAME).tags)


def test_better_candidate_is_promoted_and_both_scores_are_printed(store):
    store.train_run(0.80)
    assert promote_cli().exit_code == 0
    store.train_run(0.85)
    result = promote_cli()
    assert result.exit_code == 0, result.output
    assert "version 2 is @champion (test_accuracy 0.85), replacing version 1 (test_accuracy 0.8)" \
        in result.stdout
    cfg = store.cfg()
    assert champion_state(cfg) == ("2", ["1", "2"])
    assert registry.get_version(cfg, NAME, version="2").tags["sent.previous_champion"] == "1"


def test_worse_candidate_is_registered_but_the_champion_is_kept_exit_3(store):
    store.train_run(0.80)
    promote_cli()
    worse = store.train_run(0.78)
    result = promote_cli()
    assert result.exit_code == 3, result.output
    assert "kept: version 1 stays @champion" in result.stdout
    assert "0.78" in result.stdout and "0.8" in result.stdout
    cfg = store.cfg()
    assert champion_state(cfg) == ("1", ["1"])
    assert version_of(cfg, worse) == "2"  # registered all the same, for --run-id or --force later


def test_a_tie_keeps_the_champion(store):
    store.train_run(0.80)
    promote_cli()
    store.train_run(0.80)
    assert promote_cli().exit_code == 3


def test_force_promotes_a_worse_candidate(store):
    store.train_run(0.80)
    promote_cli()
    store.train_run(0.70)
    result = promote_cli("--force")
    assert result.exit_code == 0, result.output
    assert "promoted (--force)" in result.stdout
    assert champion_state(store.cfg()) == ("2", ["1", "2"])


def test_min_improvement_must_be_exceeded(store):
    store.train_run(0.80)
    promote_cli()
    store.train_run(0.85)  # better by 0.05: not "more than" 0.05
    result = promote_cli("--set", "promote.min_improvement=0.05")
    assert result.exit_code == 3, result.output
    assert "by more than 0.05" in result.stdout
    store.train_run(0.86)
    assert promote_cli("--set", "promote.min_improvement=0.05").exit_code == 0
    assert champion_state(store.cfg())[0] == "3"


def test_lower_is_better_for_a_loss_metric(store):
    store.train_run(0.80, metrics={"test_loss": 0.50})
    promote_cli("--set", "promote.metric=test_loss")
    store.train_run(0.90, metrics={"test_loss": 0.60})
    assert promote_cli("--set", "promote.metric=test_loss").exit_code == 3
    store.train_run(0.70, metrics={"test_loss": 0.40})
    assert promote_cli("--set", "promote.metric=test_loss").exit_code == 0
    assert champion_state(store.cfg()) == ("3", ["1", "3"])


def test_the_same_run_twice_reuses_its_version(store):
    rid = store.train_run(0.80)
    assert promote_cli().exit_code == 0
    again = promote_cli("--run-id", rid)
    assert again.exit_code == 0, again.output
    assert "is already sentiment-classifier version 1; reusing it" in again.stdout
    assert "version 1 is already @champion" in again.stdout
    cfg = store.cfg()
    assert len(registry.search_versions(cfg, NAME)) == 1
    assert champion_state(cfg) == ("1", ["1"])


def test_reuse_refreshes_scores_after_a_new_eval(store):
    first = store.train_run(0.80)
    promote_cli()
    second = store.train_run(0.70)
    assert promote_cli().exit_code == 3
    with registry.run(store.cfg(), run_id=second):  # `sent eval` ran again on run 2
        registry.log_metrics({"test_accuracy": 0.90})
    result = promote_cli("--run-id", second)
    assert result.exit_code == 0, result.output
    assert "updated test_accuracy" in result.stdout
    cfg = store.cfg()
    assert champion_state(cfg) == ("2", ["1", "2"])
    assert len(registry.search_versions(cfg, NAME, run_id=first)) == 1


def test_default_candidate_is_the_last_finished_training_run_with_a_model(store):
    wanted = store.train_run(0.70)
    store.train_run(0.99, kind="other")  # not a training run
    store.train_run(0.99, log_model=False)  # no model artifact
    result = promote_cli()
    assert result.exit_code == 0, result.output
    assert registry.get_version(store.cfg(), NAME, alias="champion").run_id == wanted


def test_run_id_picks_an_older_run(store):
    old = store.train_run(0.90)
    store.train_run(0.70)
    assert promote_cli("--run-id", old).exit_code == 0
    assert registry.get_version(store.cfg(), NAME, alias="champion").run_id == old


# ---------------------------------------------------------------- errors a user can cause


def test_unknown_run_id_is_a_one_line_error(store):
    store.train_run(0.80)
    result = promote_cli("--run-id", "0123456789abcdef0123456789abcdef")
    assert result.exit_code == 1
    assert "0123456789abcdef0123456789abcdef" in one_line_error(result)


def test_missing_metric_says_run_eval_first_and_registers_nothing(store):
    rid = store.train_run(None)
    result = promote_cli()
    assert result.exit_code == 1
    err = one_line_error(result)
    assert "test_accuracy" in err and "sent eval" in err and rid in err
    assert registry.registered_model(store.cfg(), NAME) is None


def test_force_registers_a_candidate_without_scores(store):
    store.train_run(None)
    result = promote_cli("--force")
    assert result.exit_code == 0, result.output
    assert "test_accuracy n/a" in result.stdout


def test_champion_without_a_score_needs_force(store):
    store.train_run(None)
    promote_cli("--force")
    store.train_run(0.9)
    result = promote_cli()
    assert result.exit_code == 1
    assert "--force" in one_line_error(result)


def test_no_training_run_at_all(store):
    result = promote_cli()
    assert result.exit_code == 1
    assert "sent train" in one_line_error(result)


def test_run_without_a_model_artifact(store):
    rid = store.train_run(0.8, log_model=False)
    result = promote_cli("--run-id", rid)
    assert result.exit_code == 1
    assert "no 'model' artifact" in one_line_error(result)


@pytest.mark.parametrize("args", [
    ["--run-id", "x", "--model-dir", "y"], ["--rollback", "--list"], ["--list", "--force"],
    ["--rollback", "--run-id", "x"], ["--bogus"],
])
def test_bad_usage_exits_2(store, args):
    result = promote_cli(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_an_upload_that_differs_from_what_training_recorded_is_refused(store):
    rid = store.train_run(0.8)
    weights = store.folder_of(rid) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    result = promote_cli()
    assert result.exit_code == 1
    assert "refusing" in one_line_error(result)
    assert registry.registered_model(store.cfg(), NAME) is None


def test_an_artifact_changed_after_registration_is_refused_on_reuse(store):
    rid = store.train_run(0.8)
    promote_cli()
    folder = store.folder_of(rid)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    # the attacker also rewrote the recorded hashes the first check relies on
    meta = json.loads((folder / "sent.json").read_text())
    meta["weights_sha256"] = model.weights_sha256(folder)
    (folder / "sent.json").write_text(json.dumps(meta))
    registry.set_run_tags(store.cfg(), rid, {"weights_sha256": meta["weights_sha256"]})
    result = promote_cli("--run-id", rid)
    assert result.exit_code == 1
    assert "changed after registration" in one_line_error(result)


# ---------------------------------------------------------------- --model-dir


def test_model_dir_is_logged_to_its_own_run_with_the_scores_that_belong_to_it(store):
    folder = store.model_folder("exported", metrics={"val_accuracy": 0.7})
    sha = model.weights_sha256(folder)
    Path("metrics").mkdir()
    Path("metrics/eval.json").write_text(json.dumps(
        {"accuracy": 0.83, "f1": 0.82, "precision": 0.8, "recall": 0.84, "loss": 0.4,
         "split": "test", "weights_sha256": sha}))
    result = promote_cli("--model-dir", str(folder))
    assert result.exit_code == 0, result.output
    cfg = store.cfg()
    mv = registry.get_version(cfg, NAME, alias="champion")
    assert mv.tags["weights_sha256"] == sha
    assert float(mv.tags["test_accuracy"]) == pytest.approx(0.83)
    run = registry.get_run(cfg, mv.run_id)
    assert run.data.tags["sent.kind"] == "register"
    assert run.data.metrics["val_accuracy"] == pytest.approx(0.7)
    # the same folder again: same version, no new run
    again = promote_cli("--model-dir", str(folder))
    assert again.exit_code == 0, again.output
    assert "already @champion" in again.stdout
    assert len(registry.search_versions(cfg, NAME)) == 1


def test_model_dir_ignores_an_eval_json_of_other_weights(store):
    folder = store.model_folder("exported")
    Path("metrics").mkdir()
    Path("metrics/eval.json").write_text(json.dumps({"accuracy": 0.9, "weights_sha256": "other"}))
    result = promote_cli("--model-dir", str(folder))
    assert result.exit_code == 1
    assert "sent eval" in one_line_error(result)


def test_model_dir_that_is_not_a_model_folder(store, tmp_path):
    (tmp_path / "empty").mkdir()
    result = promote_cli("--model-dir", str(tmp_path / "empty"))
    assert result.exit_code == 1
    assert "config.json" in one_line_error(result)
    result = promote_cli("--model-dir", str(tmp_path / "nope"))
    assert "does not exist" in one_line_error(result)


# ---------------------------------------------------------------- rollback and listing


def test_rollback_twice_walks_back_then_says_there_is_no_previous_champion(store):
    for acc in (0.80, 0.85, 0.90):
        store.train_run(acc)
        assert promote_cli().exit_code == 0
    cfg = store.cfg()
    assert champion_state(cfg) == ("3", ["1", "2", "3"])
    first = promote_cli("--rollback")
    assert first.exit_code == 0, first.output
    assert "@champion is sentiment-classifier version 2 again (was version 3)" in first.stdout
    assert champion_state(cfg) == ("2", ["1", "2"])
    assert "sent.rolled_back_at" in registry.get_version(cfg, NAME, version="3").tags
    assert promote_cli("--rollback").exit_code == 0
    assert champion_state(cfg) == ("1", ["1"])
    last = promote_cli("--rollback")
    assert last.exit_code == 1
    assert "no previous champion" in one_line_error(last)
    assert champion_state(cfg) == ("1", ["1"])


def test_rollback_then_promote_again_keeps_a_linear_history(store):
    store.train_run(0.80)
    promote_cli()
    store.train_run(0.85)
    promote_cli()
    promote_cli("--rollback")
    store.train_run(0.83)  # better than the restored version 1
    assert promote_cli().exit_code == 0
    assert champion_state(store.cfg()) == ("3", ["1", "3"])


def test_a_rolled_back_version_is_not_promoted_again_without_force(store):
    store.train_run(0.80)
    promote_cli()
    store.train_run(0.90)
    promote_cli()
    assert promote_cli("--rollback").exit_code == 0
    again = promote_cli()  # the routine job: the last training run is the rolled-back one
    assert again.exit_code == 3, again.output
    assert "was rolled back at" in again.stdout and "--force" in again.stdout
    assert champion_state(store.cfg()) == ("1", ["1"])
    assert promote_cli("--force").exit_code == 0
    assert champion_state(store.cfg()) == ("2", ["1", "2"])
    assert promote_cli().exit_code == 0  # promoted again since: no longer held back
    promote_cli("--rollback")
    assert promote_cli().exit_code == 3


def test_rollback_skips_deleted_versions(store):
    for acc in (0.80, 0.85, 0.90):
        store.train_run(acc)
        promote_cli()
    cfg = store.cfg()
    registry.client(cfg).delete_model_version(NAME, "2")
    result = promote_cli("--rollback")
    assert result.exit_code == 0, result.output
    assert champion_state(cfg) == ("1", ["1"])


def test_rollback_without_a_registry(store):
    result = promote_cli("--rollback")
    assert result.exit_code == 1
    assert "nothing to roll back" in one_line_error(result)


def test_list_shows_versions_scores_aliases_created_and_runs(store):
    a = store.train_run(0.80)
    promote_cli()
    b = store.train_run(0.90)
    promote_cli()
    c = store.train_run(0.70)
    promote_cli()
    result = promote_cli("--list")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in ("version", "aliases", "test_accuracy", "test_f1", "created (UTC)", "run id",
                 "@champion", "0.8", "0.9", "0.7", a, b, c, "history, oldest first: 1 → 2"):
        assert text in out, text
    rows = [line for line in out.splitlines() if b in line]
    assert "@champion" in rows[0] and "0.9" in rows[0]
    assert out.index(c) < out.index(a)  # newest first


def test_list_without_a_registry(store):
    result = promote_cli("--list")
    assert result.exit_code == 1
    assert "sent promote" in one_line_error(result)


# ---------------------------------------------------------------- what serve gets


def test_resolve_champion_gives_the_registered_weights_and_refuses_tampered_ones(store, tmp_path):
    rid = store.train_run(0.8)
    promote_cli()
    cfg = store.cfg()
    folder, info = registry.resolve_model(cfg, f"models:/{NAME}@champion", tmp_path / "dl1")
    assert info["version"] == "1" and info["run_id"] == rid
    assert model.weights_sha256(folder) == info["weights_sha256"]
    assert model.weights_sha256(folder) == model.weights_sha256(store.folder_of(rid))
    weights = store.folder_of(rid) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    with pytest.raises(registry.RegistryError, match="does not match"):
        registry.resolve_model(cfg, f"models:/{NAME}@champion", tmp_path / "dl2")


# ---------------------------------------------------------------- consistency


@pytest.mark.parametrize("champion, history, pending, expected", [
    (None, [], None, []),
    ("2", ["1", "2"], None, ["1", "2"]),
    ("3", ["1", "2"], {"alias": 3, "history": [1, 2, 3]}, ["1", "2", "3"]),  # stopped mid-promote
    ("1", ["1", "2"], {"alias": 1, "history": [1]}, ["1"]),  # stopped mid-rollback
    ("1", ["1", "2"], None, ["1"]),  # moved back by hand
    ("5", ["1", "2"], None, ["1", "2", "5"]),  # moved by hand
    ("5", ["1", "2"], {"alias": 4, "history": [1, 2, 4]}, ["1", "2", "5"]),  # stale intent
    ("1", ["1", "2", "3"], {"alias": 1, "history": [1, 2, 3, 1]}, ["1", "2", "3", "1"]),
])
def test_reconcile(champion, history, pending, expected):
    assert reconcile(champion, history, pending) == expected


def test_a_change_that_stopped_after_moving_the_alias_is_completed_by_the_next_reader(
        store, monkeypatch):
    store.train_run(0.80)
    promote_cli()
    store.train_run(0.90)
    real = registry.set_model_tag

    def crash_on_history(cfg, name, key, value):
        if key.startswith("sent.history"):
            raise KeyboardInterrupt  # the process dies between the alias and the history
        real(cfg, name, key, value)

    monkeypatch.setattr(registry, "set_model_tag", crash_on_history)
    with pytest.raises(KeyboardInterrupt):
        promote.run(store.cfg())
    monkeypatch.setattr(registry, "set_model_tag", real)
    cfg = store.cfg()
    raw = registry.registered_model(cfg, NAME)
    assert str(raw.aliases["champion"]) == "2"
    assert json.loads(raw.tags["sent.history.champion"]) == [1]  # inconsistent on disk
    assert promote.read_state(cfg, NAME, "champion").history == ["1", "2"]  # readers see through it
    listed = promote_cli("--list")
    assert "1 → 2" in listed.stdout
    assert promote_cli("--rollback").exit_code == 0  # the next change repairs, then acts
    assert champion_state(cfg) == ("1", ["1"])


def test_a_racer_between_decision_and_verification_makes_the_promoter_decide_again(
        store, monkeypatch):
    """No lock (as against a tracking server): another promoter moves the alias right after ours."""
    store.train_run(0.80)
    promote_cli()
    store.train_run(0.95)  # version 2: the racer, the best
    promote_cli("--run-id", store.runs[1], "--force")
    promote_cli("--rollback")  # champion 1 again; 2 is registered
    store.train_run(0.90)  # version 3: ours
    cfg = store.cfg()
    real = registry.set_alias
    raced = []

    def set_alias_then_race(cfg_, name, alias, version):
        real(cfg_, name, alias, version)
        if not raced:  # the racer overwrites alias and history, as its own _move would
            raced.append(version)
            real(cfg_, name, alias, "2")
            registry.set_model_tag(cfg_, name, "sent.history.champion", "[1, 2]")

    monkeypatch.setattr(registry, "set_alias", set_alias_then_race)
    outcome = promote.run(cfg)
    assert raced == ["3"]
    assert outcome.action == "kept"  # decided again: 0.90 does not beat the racer's 0.95
    assert outcome.previous == "2"
    # version 3 did hold the alias for a moment, between our write and the racer's
    assert champion_state(cfg) == ("2", ["1", "3", "2"])


# Imported before the race (seconds of imports otherwise), so that the promoters really race.
WARM_MODULES = ["mlflow", "mlflow.artifacts", "mlflow.store.tracking.sqlalchemy_store",
                "mlflow.store.model_registry.sqlalchemy_store", "filelock", "sentiment_cli.config",
                "sentiment_cli.promote"]


def _warm_up() -> None:
    import importlib

    for name in WARM_MODULES:
        importlib.import_module(name)


def _race_worker(args):
    """One promoter process: promote (or roll back) against the shared store; returns outcomes."""
    import contextlib
    import os

    uri, workdir, ops, locked = args
    os.chdir(workdir)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    from sentiment_cli import config

    cfg = config.load("tiny")
    real_lock = registry.registry_lock
    if not locked:  # as against a tracking server: only compare-and-verify keeps order
        registry.registry_lock = lambda cfg: contextlib.nullcontext()
    codes = []
    try:
        for op, run_id in ops:
            try:
                if op == "rollback":
                    codes.append(promote.rollback(cfg).exit_code)
                else:
                    codes.append(promote.run(cfg, run_id=run_id, force=op == "force").exit_code)
            except PromoteError as exc:
                codes.append(f"error: {exc}")
    finally:
        registry.registry_lock = real_lock
    return codes


@pytest.fixture(scope="module")
def promoters():
    """Three warm promoter processes. Forked from a fresh forkserver that has imported MLflow
    (fast, one import for all), never from this process, which holds SQLite connections."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(WARM_MODULES)
    with ctx.Pool(3, initializer=_warm_up) as pool:
        yield pool


def _assert_invariant(cfg):
    champion, history = champion_state(cfg)
    assert champion is not None and history and history[-1] == champion
    assert all(a != b for a, b in zip(history, history[1:], strict=False))
    rm = registry.registered_model(cfg, NAME)
    assert "sent.pending.champion" not in rm.tags
    return champion, history


def test_racing_promoters_take_turns_and_the_best_candidate_wins(store, promoters):
    scores = [0.81, 0.88, 0.84]
    runs = [store.train_run(s) for s in scores]
    jobs = [(store.uri, str(store.root), [("promote", rid)], True) for rid in runs]
    codes = [c for r in promoters.map(_race_worker, jobs) for c in r]
    assert all(c in (0, 3) for c in codes), codes
    cfg = store.cfg()
    champion, history = _assert_invariant(cfg)
    assert registry.get_version(cfg, NAME, alias="champion").run_id == runs[1]  # 0.88
    by_version = {str(mv.version): float(mv.tags["test_accuracy"])
                  for mv in registry.search_versions(cfg, NAME)}
    assert len(by_version) == 3  # one version per run, no duplicates
    ladder = [by_version[v] for v in history]
    assert ladder == sorted(ladder) and len(set(ladder)) == len(ladder)  # each beat the last
    assert codes.count(0) == len(history)


@pytest.mark.parametrize("locked", [True, False], ids=["sqlite-lock", "no-lock"])
def test_racing_promotions_and_rollbacks_leave_alias_and_history_agreeing(store, promoters,
                                                                           locked):
    runs = [store.train_run(s) for s in (0.80, 0.82, 0.84)]
    promote.run(store.cfg(), run_id=runs[0])
    ops = [[("force", runs[1]), ("rollback", None), ("force", runs[1]), ("force", runs[0])],
           [("force", runs[2]), ("rollback", None), ("force", runs[2]), ("rollback", None)],
           [("rollback", None), ("force", runs[1]), ("rollback", None), ("rollback", None)]]
    results = promoters.map(_race_worker, [(store.uri, str(store.root), o, locked) for o in ops])
    for codes in results:  # every change either happened or was refused cleanly
        for c in codes:
            assert c == 0 or (isinstance(c, str) and "no previous champion" in c), codes
    champion, history = _assert_invariant(store.cfg())
    # every version in the history really was promoted at some point
    promoted = {str(mv.version) for mv in registry.search_versions(store.cfg(), NAME)
                if "sent.promoted_at" in (mv.tags or {})}
    assert set(history) <= promoted


# ---------------------------------------------------------------- a new SQLite store, first used by several at once


def _env_without_mlflow() -> dict[str, str]:
    """This process's environment less the store URIs earlier tests' MLflow calls exported."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    return {**env, "MLFLOW_DISABLE_TELEMETRY": "true"}


def test_racing_first_use_of_a_new_store_leaves_it_usable(tmp_path):
    """Four `sent promote` start on a store that does not exist yet. Creating and migrating it is
    serialised: each ends in its own one-line answer, and the store works afterwards."""
    import subprocess
    import sys

    db = tmp_path / "fresh.db"
    env = {**_env_without_mlflow(), "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    cmd = [sys.executable, "-m", "sentiment_cli.cli", "promote", "--profile", "tiny"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert "Traceback" not in err, err
        assert p.returncode == 1 and "no finished `sent train` run" in err, err
    after = subprocess.run([*cmd, "--list"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)  # the store answers: an empty registry, in one line
    assert after.returncode == 1 and "no registered model" in after.stderr, after.stderr
    assert "Traceback" not in after.stderr and "alembic" not in after.stderr
    import sqlite3

    with sqlite3.connect(db) as con:  # complete, and no migration left half-done
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"experiments", "runs", "registered_models", "alembic_version"} <= tables
    assert not any(t.startswith("_alembic_tmp") for t in tables)


def test_a_half_migrated_store_is_one_line_with_what_to_do(tmp_path):
    import sqlite3
    import subprocess
    import sys

    from sentiment_cli import config

    db = tmp_path / "half.db"
    cfg = config.load("tiny", [f"mlflow.tracking_uri=sqlite:///{db}"], root=tmp_path)
    registry.client(cfg)  # a complete store
    with sqlite3.connect(db) as con:  # what an interrupted migration leaves behind
        con.execute("CREATE TABLE _alembic_tmp_latest_metrics (x INTEGER)")
        con.execute("UPDATE alembic_version SET version_num = '0584bdc529eb'")
    env = {**_env_without_mlflow(), "MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    result = subprocess.run([sys.executable, "-m", "sentiment_cli.cli", "promote", "--profile", "tiny", "--list"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "half-migrated" in lines[0] and "mlflow db upgrade" in lines[0] and "_alembic_tmp" in lines[0]
