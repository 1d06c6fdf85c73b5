import subprocess
import sys

import pytest

from qualcl.cli import build_parser, main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("list", "run", "data"):
        assert command in out


def test_list_shows_primitives_and_recipes(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in (
        "MultiLevelInfoNCE",
        "ClipLoss",
        "SelfPacedHardNegativeMiner",
        "gather_with_grad",
        "comcl",
        "mkcnet",
        "multiclass_auroc_ovo",
    ):
        assert name in out


def test_run_comcl_help_has_the_recipe_options():
    parser = build_parser()
    args = parser.parse_args(["run", "comcl", "--preset", "smoke", "--out", "x", "--set", "pretrain.steps=2"])
    assert (args.preset, args.out, args.overrides) == ("smoke", "x", ["pretrain.steps=2"])


def test_bad_values_are_rejected_with_a_message(capsys):
    with pytest.raises(SystemExit):
        main(["data", "synth", "fundus", "--out", "x", "--lq-ratio", "1.5"])
    assert "must lie in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "comcl", "--preset", "huge"])


def test_console_script_is_installed():
    result = subprocess.run(
        [sys.executable, "-m", "qualcl.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("qualcl ")
