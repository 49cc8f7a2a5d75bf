"""The `sent` command line: each command loads the configuration and makes one call into a step.

Heavy libraries (torch, transformers, mlflow, litestar) are imported inside the commands, so
`sent --help` answers at once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

import sentiment_cli

app = typer.Typer(
    name="sent",
    help="Fine-tune, evaluate, promote, serve and monitor a transformer sentiment classifier.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="Overlay profiles/NAME.yaml on params.yaml.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one key, e.g. --set train.lr=3e-5 (repeatable)."),
]

# Exit statuses scripts can rely on.
EXIT_USAGE = 2  # bad configuration or arguments
EXIT_FAILED = 1  # the step could not do its work (bad data, missing model, ...)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def load_config(profile: str, overrides: list[str] | None, options: dict[str, Any] | None = None,
                step: str | None = None):
    """The configuration for a command: profile, --set overrides, then the command's own flags.

    Each value of ./params.yaml the profile replaces is a note on stderr. For train and eval, a
    --set on a key only `sent fetch` acts on must match what the fetched data was made with: else
    it would change nothing, and the error says where it belongs."""
    from sentiment_cli import config  # omegaconf costs ~100 ms: not for `sent --help`

    notes: list[str] = []
    try:
        cfg = config.load(profile, overrides or [], options=options, notes=notes)
    except config.ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    for note in notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
    if step is not None:
        from sentiment_cli import data

        _run(lambda: data.check_fetched_with(cfg, overrides or [], step))
    return cfg


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sent {sentiment_cli.__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Fine-tune, evaluate, promote, serve and monitor a transformer sentiment classifier."""


def _run(step_call) -> object:
    """Call a step; an error the user can fix ends in one line and its exit status."""
    from sentiment_cli.errors import SentError

    try:
        return step_call()
    except SentError as exc:  # a UsageError (bad option or config value) exits 2, others 1
        fail(str(exc), exc.exit_code)
    except FileNotFoundError as exc:
        fail(str(exc))


@app.command()
def fetch(
    source: Annotated[str | None, typer.Argument(
        help="A CSV/TSV/JSONL/JSON/Parquet file, a folder of train.* (validation.*, test.*) tables, "
             "hf:NAME, rt-polarity:PATH or builtin:rt-polarity (default data.source).",
        metavar="SOURCE", show_default=False)] = None,
    profile: ProfileOpt = "cpu",
    set_: SetOpt = None,
    text_column: Annotated[str | None, typer.Option(
        "--text-column", help="The column holding the texts (default data.text_column).")] = None,
    label_column: Annotated[str | None, typer.Option(
        "--label-column", help="The column holding the labels (default data.label_column).")] = None,
    labels: Annotated[str | None, typer.Option(
        "--labels", help="Label names in id order, comma-separated, e.g. negative,positive "
                         "(default data.label_names; null: the sorted labels found in the data).")] = None,
) -> None:
    """Read data.source, validate it, and write train/validation/test parquet + meta.json."""
    from sentiment_cli import fetch as step

    names = None if labels is None else [n.strip() for n in labels.split(",") if n.strip()]
    flags = {"data.source": source, "data.text_column": text_column, "data.label_column": label_column,
             "data.label_names": names}
    cfg = load_config(profile, set_, flags)
    # the data keys this command line names: a choice, not a stale configuration, for train's word
    given = {k.split(".", 1)[1] for k, v in flags.items() if v is not None}
    given |= {k.split(".", 1)[1] for k in (s.split("=", 1)[0].strip() for s in set_ or []) if k.startswith("data.")}
    _run(lambda: step.run(cfg, given=sorted(given)))


@app.command()
def train(
    profile: ProfileOpt = "cpu",
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option(
        help="Continue from the newest complete checkpoint; an error when there is none.")] = False,
    auto_resume: Annotated[bool | None, typer.Option(
        "--auto-resume/--no-auto-resume",
        help="Continue from the newest complete checkpoint when there is one, else start fresh "
             "(default: on inside a Vertex AI job, where AIP_CHECKPOINT_DIR is set).")] = None,
    launch_mode: Annotated[str, typer.Option(
        "--launch",
        help="none: train in this process (also right under `accelerate launch`). auto: start "
             "`accelerate launch` with one process per local GPU (or $SENT_PROCESSES_PER_MACHINE), "
             "across machines from CLUSTER_SPEC or MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE.")] = "none",
) -> None:
    """Fine-tune on paths.data_dir and write the model to paths.model_dir (+ an MLflow run).

    Inside a job, secrets named by $SENT_SECRETS are read first and AIP_MODEL_DIR,
    AIP_CHECKPOINT_DIR, AIP_TENSORBOARD_LOG_DIR become paths.model_dir, checkpoint_dir and
    metrics_dir (your --set wins). SIGTERM: checkpoint at the next step, exit 143.
    """
    import os

    from sentiment_cli import launch
    from sentiment_cli import train as step

    if launch_mode not in ("none", "auto"):
        fail(f"--launch must be none or auto, not {launch_mode!r}", EXIT_USAGE)
    job_sets = _run(lambda: launch.prepare_job(os.environ))
    cfg = load_config(profile, [*job_sets, *(set_ or [])], step="train")
    if launch_mode == "auto":
        import torch

        child = ["--profile", profile, *[a for s in set_ or [] for a in ("--set", s)]]
        child += ["--resume"] if resume else []
        child += [] if auto_resume is None else ["--auto-resume" if auto_resume else "--no-auto-resume"]
        argv = _run(lambda: launch.plan(os.environ, torch.cuda.device_count(), child))
        if argv:
            raise typer.Exit(launch.run(argv))
    auto = launch.in_job(os.environ) if auto_resume is None else auto_resume
    _run(lambda: step.run(cfg, resume=True if resume else ("auto" if auto else False), profile=profile))


@app.command("eval")
def evaluate(
    profile: ProfileOpt = "cpu",
    set_: SetOpt = None,
    model: Annotated[Path | None, typer.Option(help="Model folder (default paths.model_dir).")] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
) -> None:
    """Evaluate a model folder on a split: metrics/eval.json, plots, misclassified examples."""
    from sentiment_cli import evaluate as step

    cfg = load_config(profile, set_, step="eval")
    _run(lambda: step.run(cfg, model_dir=model, split=split))


@app.command()
def serve(
    profile: ProfileOpt = "cpu",
    set_: SetOpt = None,
    model: Annotated[str | None, typer.Option(
        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or a model folder "
             "(default serve.model).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default serve.port).")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Worker processes, each with its own model copy (default serve.workers).")] = None,
    runtime: Annotated[str | None, typer.Option(
        help="auto, torch, or onnx: ONNX Runtime, faster on a CPU, exported once per weights; auto is "
             "onnx unless the model does not export, then torch (default serve.runtime).")] = None,
    quantize: Annotated[bool | None, typer.Option(
        "--quantize/--no-quantize",
        help="int8 weights: faster on the CPU, slightly less accurate (default serve.quantize).")] = None,
    accuracy_gate: Annotated[bool | None, typer.Option(
        "--accuracy-gate/--no-accuracy-gate",
        help="Serve an int8 variant only if `sent eval` measured its accuracy "
             "within serve.max_accuracy_drop (default serve.accuracy_gate).")] = None,
    verify_hash: Annotated[bool | None, typer.Option(
        "--verify-hash/--no-verify-hash",
        help="Refuse weights whose sha256 differs from the registry tag or sent.json "
             "(default serve.verify_hash).")] = None,
) -> None:
    """Serve a model over HTTP: POST /predict, /healthz, /readyz, /metrics, /schema, a page at /.

    Predictions are logged to paths.prediction_log; SIGTERM lets requests in flight finish.
    """
    from sentiment_cli import serve as step

    # Each flag is the serve.* key of the same name, validated with the rest of the configuration.
    flags = {"model": model, "host": host, "port": port, "workers": workers, "runtime": runtime,
             "quantize": quantize, "accuracy_gate": accuracy_gate, "verify_hash": verify_hash}
    cfg = load_config(profile, set_, {f"serve.{k}": v for k, v in flags.items()})
    _run(lambda: step.run(cfg))


PROMOTE_HELP = (
    "Register a candidate model and make it @champion if it beats the champion.\n\n"
    "The candidate wins when its promote.metric (test_accuracy by default: run `sent eval` "
    "first) beats the champion's by more than promote.min_improvement. The first model "
    "becomes champion. See docs/registry.md.\n\n"
    "Exit status: 0 promoted (or already champion, rolled back, listed); 3 the champion was "
    "kept; 1 error; 2 bad usage."
)


@app.command(help=PROMOTE_HELP)
def promote(
    profile: ProfileOpt = "cpu",
    set_: SetOpt = None,
    run_id: Annotated[str | None, typer.Option(
        "--run-id", help="Register this MLflow run's model (default: the last training run).",
    )] = None,
    model_dir: Annotated[Path | None, typer.Option(
        "--model-dir", help="Register a model folder: logged to an MLflow run of its own first.",
    )] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Make the candidate champion even if it does not win.",
    )] = False,
    rollback: Annotated[bool, typer.Option(
        "--rollback", help="Point the alias back at the previous champion (repeat: further back).",
    )] = False,
    list_: Annotated[bool, typer.Option(
        "--list", help="Show the registered versions: scores, aliases, created, run.",
    )] = False,
) -> None:
    """Register a candidate model and move @champion to it if it wins (see PROMOTE_HELP)."""
    from sentiment_cli import promote as step

    given = (("--run-id", run_id is not None), ("--model-dir", model_dir is not None),
             ("--rollback", rollback), ("--list", list_))
    chosen = [flag for flag, on in given if on]
    if len(chosen) > 1:
        fail(f"{' and '.join(chosen)} cannot be combined", EXIT_USAGE)
    if force and (rollback or list_):
        fail(f"--force does nothing with {chosen[0]}", EXIT_USAGE)
    cfg = load_config(profile, set_)
    if list_:
        from rich.console import Console

        table = _run(lambda: step.list_versions(cfg))
        Console(width=None if sys.stdout.isatty() else 160).print(table)
        return
    if rollback:
        outcome = _run(lambda: step.rollback(cfg))
    else:
        outcome = _run(lambda: step.run(cfg, run_id=run_id, model_dir=model_dir, force=force))
    typer.echo(outcome.summary())
    raise typer.Exit(outcome.exit_code)


SUBMIT_VERTEX_HELP = (
    "Run `sent train` as a Vertex AI custom job (see docs/vertex.md).\n\n"
    "The job comes from the vertex section: vertex.project (or GOOGLE_CLOUD_PROJECT), "
    "vertex.region, vertex.staging_bucket or vertex.base_output_dir, vertex.image_uri, "
    "vertex.machine_type, vertex.accelerator_type/accelerator_count, vertex.replica_count "
    "(machines: pool 0 one chief, pool 1 the rest), vertex.scheduling (STANDARD, SPOT, FLEX_START), "
    "vertex.service_account, vertex.network, vertex.labels, vertex.secrets. Inside, it runs "
    "`sent train --launch auto --profile VERTEX.PROFILE` with every --set whose key is not vertex.* "
    "(checked here against that profile).\n\n"
    "Submitting uses Application Default Credentials, prints the job's resource name and console "
    "link, and returns at once. Exit status: 0 submitted (with --wait: succeeded); 1 Vertex AI "
    "refused or the job failed; 2 bad usage or a job Vertex AI cannot run."
)


@app.command("submit-vertex", help=SUBMIT_VERTEX_HELP)
def submit_vertex(
    profile: ProfileOpt = "cpu",
    set_: SetOpt = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the job as JSON on stdout, validated offline as an aiplatform_v1 "
                          "CustomJob (no credentials, no network); submit nothing.")] = False,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Follow the job's state until it ends; exit 1 unless it succeeded.")] = False,
) -> None:
    """Run `sent train` as a Vertex AI custom job (see SUBMIT_VERTEX_HELP)."""
    from sentiment_cli import vertex as step

    if dry_run and wait:
        fail("--wait does nothing with --dry-run", EXIT_USAGE)
    cfg = load_config(profile, set_)
    train_sets = [s for s in set_ or [] if not s.split("=", 1)[0].strip().startswith("vertex.")]
    _run(lambda: step.run(cfg, train_sets=train_sets, dry_run=dry_run, wait=wait))


DRIFT_HELP = (
    "Test recent traffic against the held-out reference `sent eval` made for the same weights.\n\n"
    "Reads the prediction log (paths.prediction_log; a folder or an fsspec URL) or a CSV / TSV / "
    "JSONL / Parquet table with data.text_column, and writes drift.json and drift.html. Every test "
    "is Holm-corrected and must also reach its effect floor (drift.min_effect). "
    "See docs/drift.md.\n\n"
    "Exit status: 0 done (with --fail-on-drift: no drift); 4 drift found and 5 not enough data "
    "(only with --fail-on-drift); 1 error; 2 bad usage."
)


@app.command(help=DRIFT_HELP)
def drift(
    profile: ProfileOpt = "cpu",
    set_: SetOpt = None,
    current: Annotated[str | None, typer.Option(
        help="Prediction log folder or URL, or a CSV/TSV/JSONL/Parquet table of texts "
             "(default paths.prediction_log).")] = None,
    model: Annotated[str | None, typer.Option(
        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model or a model folder "
             "(default serve.model).")] = None,
    window: Annotated[int | None, typer.Option(
        help="The most recent N records (default drift.window).")] = None,
    since: Annotated[str | None, typer.Option(
        help="Only records at or after this ISO 8601 time, UTC unless it says (default drift.since).")] = None,
    until: Annotated[str | None, typer.Option(
        help="Only records before this ISO 8601 time (default drift.until).")] = None,
    output_dir: Annotated[Path | None, typer.Option(
        "--output-dir", help="Where drift.json and drift.html go (default paths.reports_dir).")] = None,
    fail_on_drift: Annotated[bool, typer.Option(
        "--fail-on-drift", help="Exit 4 when drift is found, 5 when there is not enough data.")] = False,
    serve_: Annotated[bool, typer.Option(
        "--serve", help="Run the drift service: recompute every drift.interval_s, serve "
                        "/drift.json, /drift.html, /metrics, /healthz, /readyz.")] = False,
    host: Annotated[str | None, typer.Option(help="--serve: address to bind (default drift.host).")] = None,
    port: Annotated[int | None, typer.Option(help="--serve: port (default drift.port).")] = None,
) -> None:
    """Check recent traffic for drift against the reference (see DRIFT_HELP)."""
    from sentiment_cli import drift as step

    if not serve_ and (host is not None or port is not None):
        fail("--host and --port need --serve", EXIT_USAGE)
    if serve_ and fail_on_drift:
        fail("--fail-on-drift does nothing with --serve", EXIT_USAGE)
    flags = {"window": window, "since": since, "until": until, "host": host, "port": port}
    cfg = load_config(profile, set_, {f"drift.{k}": v for k, v in flags.items()})
    if serve_:
        from sentiment_cli.drift import service

        _run(lambda: service.run(cfg, current=current, model_uri=model, output_dir=output_dir))
        return
    outcome = _run(lambda: step.run(cfg, current=current, model_uri=model, output_dir=output_dir))
    raise typer.Exit(outcome.exit_code(fail_on_drift))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
