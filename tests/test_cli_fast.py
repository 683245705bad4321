"""The ``rlflat`` command and the fast answers: ``--help`` and argument errors before torch is imported.

Latency itself is measured, not asserted (``time python -m rlflat.train --help``); these tests hold what makes it
fast: the snapshot equals the live parsers, the early answers never import torch, they agree with the real
parsers, and a snapshot taken from another version of a command is not used.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rlflat import fastcli
from rlflat.__main__ import main as rlflat_main
from rlflat.fastcli import COMMANDS, answer_early, light_parser, live_snapshot, stored_snapshot

ROOT = Path(__file__).resolve().parents[1]


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_snapshot_is_the_live_parsers() -> None:
    assert stored_snapshot() == live_snapshot(), (
        "stale CLI snapshot (a command's flags changed): run python -m rlflat.fastcli --write and commit it"
    )


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_and_argument_errors_answer_without_importing_torch(command: str) -> None:
    probe = (
        "import sys\n"
        "from rlflat.__main__ import main\n"
        f"for argv in ([{command!r}, '--help'], [{command!r}, 'x', '--no-such-flag']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exit:\n"
        "        print('exit', exit.code)\n"
        "print('torch' in sys.modules, 'stable_baselines3' in sys.modules)\n"
    )
    done = _python("-c", probe)
    assert done.stdout.splitlines()[-3:] == ["exit 0", "exit 2", "False False"], done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "unrecognized arguments: --no-such-flag" in done.stderr
    assert stored_snapshot()[command]["help"] in done.stdout


@pytest.mark.parametrize("command", ["train", "probe", "evaluate", "sweep"])
def test_python_m_forms_answer_help_before_heavy_imports(command: str) -> None:
    module = COMMANDS[command][0].removesuffix(".__main__")
    done = _python("-X", "importtime", "-m", module, "--help")
    assert done.returncode == 0 and done.stdout == stored_snapshot()[command]["help"]
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "stable_baselines3" not in imported


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("train", ["ppo", "CartPole", "--steps", "many"]),
        ("train", ["ppo", "CartPole", "--seed"]),
        ("probe", ["run", "--batches", "2.5"]),
        ("evaluate", ["run", "--points", "x"]),
        ("sweep", ["configs/smoke.yaml", "--workers"]),
        ("report", []),
    ],
)
def test_the_light_parser_refuses_what_the_real_parser_refuses(
    command: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as early:
        answer_early(command, argv)
    assert early.value.code == 2
    fast = capsys.readouterr().err
    import importlib

    from rlflat.cli import run_cli

    module = importlib.import_module(COMMANDS[command][0])
    assert run_cli(module.main, argv) == 2
    assert capsys.readouterr().err == fast  # the same one line


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("train", ["ppo", "CartPole", "--steps", "100", "--set", "a=1", "--set", "b=2", "--track-sharpness"]),
        ("probe", ["run", "--measures", "hessian,fisher", "--batches", "2", "--quick"]),
        ("evaluate", ["run", "--grid", "length:masscart", "--points", "9", "--force"]),
        ("sweep", ["configs/smoke.yaml", "--dry-run", "--out", "x"]),
        ("report", ["a", "b", "--out", "c", "--n-boot", "10"]),
    ],
)
def test_the_light_parser_lets_valid_argv_through(command: str, argv: list[str]) -> None:
    answer_early(command, argv)  # returns: the real parser takes over
    parser = light_parser(stored_snapshot()[command])
    assert parser is not None


def test_a_snapshot_of_another_version_of_the_command_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastcli, "source_hash", lambda module: "changed")
    answer_early("train", ["--help", "--no-such-flag"])  # returns instead of answering from the snapshot


def test_rlflat_command_lists_subcommands_and_refuses_unknown_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert rlflat_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS)
    assert rlflat_main([]) == 2
    assert rlflat_main(["trian"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "error: rlflat: unknown command 'trian'; valid commands: " + ", ".join(COMMANDS)


def test_python_m_rlflat_runs_a_subcommand() -> None:
    done = _python("-m", "rlflat", "train", "--list")
    assert done.returncode == 0 and "task CartPole" in done.stdout and "algo ppo_sam" in done.stdout


def test_console_script_is_declared() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert 'rlflat = "rlflat.__main__:main"' in text.split("[project.scripts]", 1)[1]
