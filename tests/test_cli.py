"""The command line as a user meets it: help, version, exit statuses, one-line errors."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from sentiment_cli import __version__
from sentiment_cli.cli import app

runner = CliRunner()
COMMANDS = ["fetch", "train", "eval", "promote", "serve"]


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "--profile" in result.output and "--set" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"sent {__version__}"


def test_importing_the_cli_loads_no_heavy_library():
    # `sent --help` must answer at once: torch, transformers, mlflow, litestar load only in commands
    code = ("import sys, sentiment_cli.cli; "
            "heavy = [m for m in ('torch', 'transformers', 'mlflow', 'litestar', 'accelerate', 'pandas', 'omegaconf') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["fetch", "--profile", "nope"], "no profile named 'nope'"),
        (["fetch", "--set", "train.bogus=1"], "bogus"),
        (["train", "--set", "train.epochs=lots"], "train.epochs"),
        (["eval", "--set", "novalue"], "expected key=value"),
    ],
)
def test_configuration_errors_exit_2_with_one_line(workdir, args, fragment):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert fragment in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["fetch", "--set", "data.source=missing.csv"], "does not exist"),
        (["fetch", "--set", "data.source=rt-polarity:/nowhere"], "does not exist"),
        (["eval", "--profile", "tiny"], "run `sent fetch` first"),
        (["train", "--profile", "tiny", "--resume"], "no complete checkpoint"),
    ],
)
def test_user_errors_exit_1_without_traceback(workdir, args, fragment):
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert fragment in result.output and "Traceback" not in result.output


def test_bad_table_leaves_no_output(workdir):
    (workdir / "bad.csv").write_text("text,label\nfine,0\ngood,7\n")
    result = runner.invoke(app, ["fetch", "--set", "data.source=bad.csv", "--set", "data.label_names=neg,pos"])
    assert result.exit_code == 1 and "outside the label set" in result.output
    assert not (workdir / "data").exists() or not any((workdir / "data").iterdir())
