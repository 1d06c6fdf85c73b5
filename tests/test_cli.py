import json
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
        assert recipe.spec is entry.load_spec()
        for preset in recipe.presets:
            assert recipe.config(preset).preset == preset
        for variant in recipe.spec.ablations.values():  # every ablation variant builds its config
            recipe.config(overrides=variant.overrides)


@pytest.mark.parametrize("what", ["recipes", "models"])
def test_list_aligns_its_descriptions_whatever_the_longest_name(capsys, what):
    assert main(["list", what]) == 0
    first_block = capsys.readouterr().out.split("\n\n")[0]  # `list models` goes on with the models module
    rows = [line for line in first_block.splitlines() if line.startswith("    ")]
    names = [row.split()[0] for row in rows]
    starts = {len(row) - len(row[4 + len(name) :].lstrip()) for row, name in zip(rows, names, strict=True)}
    assert len(rows) >= 5 and starts == {4 + max(map(len, names)) + 2}  # one column, two spaces after the longest


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


# ---------------------------------------------------------------- quick answers (issue 29)

#: Runs ``qualcl.cli.main(argv)`` and reports its exit code, its output and which heavy modules it imported.
_CHILD = """
import contextlib, io, json, sys
from qualcl.cli import main
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        code = main(sys.argv[1:])
    except SystemExit as stop:
        code = stop.code
heavy = sorted(m for m in ("torch", "lightning", "timm", "open_clip", "torchvision", "numpy") if m in sys.modules)
print(json.dumps({"code": code, "out": out.getvalue(), "err": err.getvalue(), "heavy": heavy}))
"""


def _answer(tmp_path, *argv):
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, *argv], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("argv", "code", "expected"),
    [
        (["--help"], 0, "COMMAND"),
        (["list", "recipes"], 0, "local-discrimination"),
        (["run", "comcl", "--help"], 0, "--set KEY=VALUE"),
        (["run", "comcl", "--set", "pretrain.stpes=3"], 2, "unknown key 'stpes' (did you mean 'steps'?)"),
        (["run", "comcl", "--set", "pretrian.steps=3"], 2, "unknown key 'pretrian' (did you mean 'pretrain'?)"),
        (["run", "comcl", "--set", "trainer.precision=bf16"], 2, "(did you mean 'bf16-mixed'?)"),
        (["run", "comcl", "--set", "backbone=resnet5"], 2, "got 'resnet5' (did you mean 'resnet50'?)"),
        (["run", "comcl", "--preset", "smoek"], 2, "invalid choice: 'smoek'"),
        (["run", "comcl", "--preset", "smoek"], 2, "(did you mean 'smoke'?)"),
        (["run", "comc", "--help"], 2, "(did you mean 'comcl'?)"),
        (["run", "mkcnet", "--dataset", "eyq"], 2, "(did you mean 'eyeq'?)"),
        (["run", "comcl-detector", "--set", "step=3"], 2, "unknown key 'step' (did you mean 'steps'?)"),
        (["run", "fundus-mm", "--set", "model.caption=autoregresive"], 2, "(did you mean 'autoregressive'?)"),
    ],
)
def test_help_and_option_errors_answer_without_torch(tmp_path, argv, code, expected):
    answer = _answer(tmp_path, *argv)
    assert answer["code"] == code, answer
    assert expected in answer["out"] + answer["err"]
    assert answer["heavy"] == [], f"qualcl {' '.join(argv)} imported {answer['heavy']}"
    assert not any(tmp_path.iterdir()), "a refused command wrote files"


def test_every_recipe_answers_help_without_torch(tmp_path):
    from qualcl.recipes import RECIPES

    for name in RECIPES:
        answer = _answer(tmp_path, "run", name, "--help")
        assert answer["code"] == 0 and f"qualcl run {name}" in answer["out"]
        assert answer["heavy"] == [], f"qualcl run {name} --help imported {answer['heavy']}"


def test_recipe_specs_agree_with_the_recipes():
    from qualcl.recipes import RECIPES

    for name, entry in RECIPES.items():
        spec, recipe = entry.load_spec(), entry.load()
        assert spec is not recipe, f"{name} has no light spec"
        assert spec.name == recipe.name == name
        assert spec.config_class is recipe.config_class
        assert spec.presets == recipe.presets
        assert (spec.datasets, spec.data_help, spec.set_example) == (
            recipe.datasets,
            recipe.data_help,
            recipe.set_example,
        )
        for preset in spec.presets:
            for dataset in (None, *spec.datasets):
                for extra in ({}, {"data_dir": "somewhere", "seed": 3, "overrides": ["seed=4"]}):
                    outcomes = []
                    for source in (spec, recipe):
                        try:
                            outcomes.append(source.config(preset, dataset=dataset, **extra))
                        except ValueError as error:
                            outcomes.append(str(error))
                    assert outcomes[0] == outcomes[1], (name, preset, dataset, extra)


def test_cnn_encoder_names_match_the_models():
    from qualcl.models import ENCODERS
    from qualcl.recipes.config import CNN_ENCODERS

    assert tuple(n for n, info in ENCODERS.items() if info.family == "cnn") == CNN_ENCODERS


@pytest.mark.parametrize("package", ["comcl", "fundus_mm", "local_discrimination", "mirror_retrieval", "mkcnet"])
def test_recipe_packages_export_every_name_on_first_use(package):
    import importlib

    module = importlib.import_module(f"qualcl.recipes.{package}")
    assert set(module.__all__) <= set(dir(module))
    for name in module.__all__:
        assert getattr(module, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        module.nonexistent  # noqa: B018


def test_list_reads_the_same_table_from_the_sources_without_torch(tmp_path):
    from qualcl.catalog import GROUPS, _SourceReader, entries, read_entries

    for item in GROUPS:
        assert read_entries(item) == entries(item), item.key
        reader = _SourceReader()  # no silent fallback to importing: every group reads from its sources today
        for module in item.modules:
            for name in reader.all_names(module):
                reader.symbol(module, name)
    answer = _answer(tmp_path, "list")
    assert answer["code"] == 0 and "MultiLevelInfoNCE" in answer["out"]
    assert answer["heavy"] == []


def test_a_recipe_without_a_headline_table_prints_its_metrics_aligned_and_missing_ones_as_a_dash():
    from qualcl.recipes._cli import _metric_lines

    lines = _metric_lines({"recall_iou50": 0.25, "precision_iou50": float("nan"), "note": "x"}).splitlines()
    assert lines == ["test metrics:", "  recall_iou50     0.250", "  precision_iou50  —", '  note             "x"']
