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


def test_run_comcl_parses_the_recipe_options_and_the_scale_out_options():
    from qualcl.recipes import RECIPES
    from qualcl.recipes._cli import build_recipe_parser, config_from_arguments

    args = build_parser().parse_args(["run", "comcl", "--preset", "smoke", "--devices", "2"])
    assert args.recipe == "comcl" and args.options == ["--preset", "smoke", "--devices", "2"]
    parser, recipe = build_recipe_parser(RECIPES["comcl"], "comcl")
    options = ["--preset", "smoke", "--out", "x", "--set", "pretrain.steps=2", "--devices", "2"]
    args = parser.parse_args([*options, "--precision", "bf16-mixed", "--strategy", "ddp", "--logger", "none"])
    assert (args.preset, args.out, args.overrides) == ("smoke", "x", ["pretrain.steps=2"])
    config = config_from_arguments(recipe, args)
    assert config.pretrain.steps == 2
    assert (config.trainer.devices, config.trainer.num_nodes, config.trainer.world_size) == (2, 1, 2)
    assert (config.trainer.precision, config.trainer.strategy, config.trainer.logger) == ("bf16-mixed", "ddp", "none")


def test_every_registered_recipe_loads_and_builds_its_presets():
    from qualcl.recipes import RECIPES

    for name, entry in RECIPES.items():
        recipe = entry.load()
        assert recipe.name == name
        for preset in recipe.presets:
            assert recipe.config(preset).preset == preset
        if entry.ablation is not None:
            assert callable(entry.load_ablation())


def test_list_models_names_every_encoder(capsys):
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    for name in ("resnet10", "vgg16_bn_tiny", "vit_small"):
        assert name in out


def test_bad_values_are_rejected_with_a_message(capsys):
    with pytest.raises(SystemExit):
        main(["data", "synth", "fundus", "--out", "x", "--lq-ratio", "1.5"])
    assert "must lie in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", "comcl", "--preset", "huge"])
    with pytest.raises(SystemExit):
        main(["run", "comcl", "--precision", "8-bit"])
    assert "invalid choice: '8-bit'" in capsys.readouterr().err
    assert main(["run", "comcl", "--preset", "smoke", "--set", "train.meta_batch=x", "--out", "never"]) == 2
    assert "unknown key 'train'" in capsys.readouterr().err


def test_console_script_is_installed():
    result = subprocess.run(
        [sys.executable, "-m", "qualcl.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.startswith("qualcl ")
