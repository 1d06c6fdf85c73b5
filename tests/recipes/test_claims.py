"""A paper's claim as a paired comparison: the difference, its paired-t interval, the verdict, the table."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from qualcl.evaluation import paired_difference
from qualcl.recipes.ablation import ablation_table, claim_results
from qualcl.recipes.config import Claim, DataConfig, RecipeConfig, RecipeSpec, Variant

values = st.lists(st.floats(-1, 1, allow_nan=False), min_size=2, max_size=8)


@settings(max_examples=60, deadline=None)
@given(values, st.data())
def test_the_interval_is_scipys_paired_t_interval(a, data):
    b = data.draw(st.lists(st.floats(-1, 1, allow_nan=False), min_size=len(a), max_size=len(a)))
    result = paired_difference(a, b)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    assert result["pairs"] == len(a)
    assert result["mean"] == pytest.approx(sum(diffs) / len(diffs), abs=1e-12)
    if len(set(diffs)) > 1:
        low, high = stats.ttest_rel(a, b).confidence_interval()
        assert (result["low"], result["high"]) == pytest.approx((low, high), rel=1e-9, abs=1e-12)
    expected = "holds" if result["low"] > 0 else "reversed" if result["high"] < 0 else "not distinguishable"
    assert result["verdict"] == expected


def test_only_finite_pairs_count_and_too_few_pairs_say_so():
    assert paired_difference([0.5, math.nan, 0.7], [0.4, 0.3, 0.5])["pairs"] == 2
    assert paired_difference([0.5], [0.4])["verdict"] == "too few pairs"
    assert paired_difference([0.5, 0.6, 0.7], [0.6, 0.7, 0.79])["verdict"] == "reversed"


def test_claims_pair_runs_by_seed_and_respect_the_metric_direction():
    per_seed = {
        "full": {0: {"overall": {"qwk": 0.6, "mre": 2.0}}, 1: {"overall": {"qwk": 0.7, "mre": 2.5}}, 2: {}},
        "base": {0: {"overall": {"qwk": 0.5, "mre": 3.0}}, 1: {"overall": {"qwk": 0.55, "mre": 3.2}}},
    }
    better, error = claim_results(
        [
            Claim("full beats base", "full", "base", "qwk"),
            Claim("lower error", "full", "base", "mre", higher_is_better=False),
        ],
        per_seed,
    )
    assert better["seeds"] == [0, 1] and better["mean"] == pytest.approx(0.125)
    assert error["mean"] == pytest.approx(0.85)  # reference - variant for an error


@dataclass
class _Data(DataConfig):
    dataset: Literal["synthetic"] = "synthetic"


@dataclass
class _Config(RecipeConfig):
    data: _Data = field(default_factory=_Data)


def test_a_claim_must_name_declared_variants():
    variants = {"a": Variant("A"), "b": Variant("B")}
    RecipeSpec("toy", _Config, {"default": {}}, ablations=variants, claims=(Claim("a beats b", "a", "b", "m"),))
    with pytest.raises(ValueError, match=r"unknown variant\(s\) \['c'\]"):
        RecipeSpec("toy", _Config, {"default": {}}, ablations=variants, claims=(Claim("c beats b", "c", "b", "m"),))


def test_the_ablation_table_starts_with_the_claims():
    class _Recipe:
        name = "toy"
        spec = RecipeSpec("toy", _Config, {"default": {}}, ablations={"full": Variant("Full"), "base": Variant("Base")})

        def ablation_columns(self, config):
            return {"qwk": "QWK"}

        def ablation_notes(self, config):
            return ""

    claims = claim_results(
        [Claim("full beats base", "full", "base", "qwk"), Claim("full beats other", "full", "other", "qwk")],
        {"full": {0: {"overall": {"qwk": 0.6}}, 1: {"overall": {"qwk": 0.7}}}, "base": {0: {"overall": {"qwk": 0.5}}}},
    )
    assert [c["statement"] for c in claims] == ["full beats base"]  # "other" was not run
    results = {"full": {"overall": {"qwk": [0.6, 0.7]}}, "base": {"overall": {"qwk": [0.5]}}}
    text = ablation_table(
        _Recipe(), _Config(), results, {"full": Variant("Full"), "base": Variant("Base")}, [0, 1], claims
    )
    assert "| full beats base | full vs base | QWK (overall) | 1 | +0.100 [n/a, n/a] | too few pairs |" in text
    assert text.index("claims") < text.index("| Full |")
    assert text.rstrip().endswith("Command: `qualcl run toy --ablation --seeds 0,1`.")


@pytest.mark.parametrize("name", ["comcl", "mkcnet", "mirror-retrieval", "fundus-mm", "local-discrimination"])
def test_every_recipe_declares_claims_it_can_measure(name):
    from qualcl.recipes import RECIPES

    recipe = RECIPES[name].load()
    assert recipe.spec.claims, "every paper recipe states its central claim"
    columns = recipe.ablation_columns(recipe.config())
    for claim in recipe.spec.claims:  # at the default preset: a metric the ablation table has
        assert claim.metric in columns, (claim, sorted(columns))


def test_claims_are_written_as_strict_json():
    import json

    from qualcl.recipes.run_folder import strict_json

    claims = claim_results([Claim("a beats b", "a", "b", "m")], {"a": {0: {"overall": {"m": 1.0}}}, "b": {}})
    assert math.isnan(claims[0]["mean"])

    def refuse(constant):
        raise ValueError(constant)

    assert json.loads(strict_json({"claims": claims}), parse_constant=refuse)["claims"][0]["mean"] is None


def test_bad_input_is_refused_with_the_argument_named():
    with pytest.raises(ValueError, match="a and b must hold one value per seed each, got 2 and 3"):
        paired_difference([0.1, 0.2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"confidence must lie in \(0, 1\), got 1.5"):
        paired_difference([0.1, 0.2], [0.0, 0.1], confidence=1.5)


def test_the_claims_page_table_is_the_recorded_measurements_with_a_command_that_runs_both_variants():
    from pathlib import Path

    from qualcl.recipes import RECIPES
    from qualcl.recipes.claims import table

    page = (Path(__file__).resolve().parents[2] / "docs" / "results" / "claims.md").read_text()
    assert table() in page, "regenerate the table: python -m qualcl.recipes.claims table"
    rows = [line for line in table().splitlines()[2:]]
    for name in RECIPES:
        for claim in RECIPES[name].load_spec().claims:
            mine = [r for r in rows if r.startswith(f"| {name} | {claim.statement} |")]
            assert mine, (name, claim.statement)
            for row in mine:
                command = row.rsplit("`qualcl run", 1)[1]
                variants = command.split("--variants ")[1].split()[0].rstrip("`").split(",")
                assert claim.variant in variants and claim.reference in variants, row


def _ablation_folder(root, configs, claims):
    import json

    import yaml

    for variant, config in configs.items():
        for seed in (1, 0):
            (root / variant / f"seed{seed}").mkdir(parents=True)
            (root / variant / f"seed{seed}" / "config.yaml").write_text(yaml.safe_dump({**config, "seed": seed}))
    (root / "ablation.json").write_text(json.dumps({**{v: {} for v in configs}, "claims": claims}))


def test_a_model_card_says_which_measured_variant_its_configuration_is_or_what_differs(tmp_path, monkeypatch):
    import json

    from qualcl.recipes import claims

    monkeypatch.setattr(claims, "MEASURED", tmp_path / "measured.json")
    assert claims.standing("toy", {"seed": 0}).startswith("No claim of this recipe has been measured")
    full = {"preset": "default", "trainer": {"devices": 1}, "data": {"image_size": 64, "data_dir": "/x"}, "lr": 0.1}
    base = {**full, "lr": 0.2}
    result = {"statement": "full beats base", "variant": "full", "reference": "base", "mean": -0.05}
    result |= {"low": -0.09, "high": -0.01, "pairs": 5, "verdict": "reversed", "seeds": [0, 1, 2, 3, 4]}
    _ablation_folder(tmp_path / "abl", {"full": full, "base": base}, [result])
    command = "qualcl run toy --ablation --seeds 0,1,2,3,4 --variants full,base"
    entry = claims.record(tmp_path / "abl", "toy", command, "toy.md")
    assert entry["configs"]["full"] == {"data.image_size": 64, "lr": 0.1}  # seed, data folder, trainer ignored
    claims.record(tmp_path / "abl", "toy", command, "toy.md")  # the same command replaces, it does not add
    assert len(claims.measurements("toy")) == 1
    same = {**full, "seed": 7, "preset": "smoke", "trainer": {"devices": 4}, "data": {"image_size": 64}}
    text = claims.standing("toy", same)
    assert text.startswith("This configuration is the `full` variant measured by `" + command)
    assert "full beats base: -0.050 [-0.090, -0.010], **reversed** (5 paired seeds)" in text
    stored = json.loads(claims.MEASURED.read_text())  # a key ignored since it was recorded is ignored there too
    stored[0]["configs"]["full"]["probe"] = True
    claims.MEASURED.write_text(json.dumps(stored))
    assert claims.standing("toy", same).startswith("This configuration is the `full` variant")
    text = claims.standing("toy", {**full, "lr": 0.3, "data": {"image_size": 96}})
    assert text.startswith("This configuration was not measured. The nearest measured one, the `full` variant")
    assert "`data.image_size` 64 → 96; `lr` 0.1 → 0.3" in text
    # a ladder that ran only some variants records only the claims between them
    unmeasured = {**result, "statement": "full beats other", "reference": "other", "pairs": 0, "verdict": "too few"}
    unmeasured |= {"mean": None, "low": None, "high": None, "seeds": []}
    _ablation_folder(tmp_path / "ladder", {"full": full, "base": base}, [result, unmeasured])
    ladder = claims.record(tmp_path / "ladder", "toy", command + " --set lr=0.5", "toy.md")
    assert [c["statement"] for c in ladder["claims"]] == ["full beats base"]
    # a setting added after the measurement: at its default it is what was measured, otherwise it differs
    defaults = {"lr": 0.01, "data": {"image_size": 32}, "projection": 0}
    assert "`projection` — → 0" in claims.standing("toy", {**same, "projection": 0})
    assert claims.standing("toy", {**same, "projection": 0}, defaults).startswith("This configuration is the `full`")
    text = claims.standing("toy", {**same, "projection": 64}, defaults)
    assert "differs in `projection` 0 → 64" in text


def test_a_run_of_a_recipe_with_claims_writes_the_section_into_its_model_card(tmp_path):
    from qualcl.recipes.run_folder import ModelCard

    card = ModelCard("t", "p", "s", claims="This configuration was not measured.")
    assert "## The paper's claims at this configuration\n\nThis configuration was not measured." in card.render(
        tmp_path
    )
    assert "claims" not in ModelCard("t", "p", "s").render(tmp_path)


@pytest.mark.parametrize("name", ["comcl", "mkcnet", "mirror-retrieval", "fundus-mm", "local-discrimination"])
def test_the_ablation_command_rebuilds_the_config_it_was_made_with(name):
    import shlex

    from qualcl.recipes import RECIPES
    from qualcl.recipes.ablation import reproduce_command
    from qualcl.recipes.claims import flat_config
    from qualcl.recipes.config import config_to_dict

    spec = RECIPES[name].load_spec()
    base = spec.config("smoke")
    section = next(k for k, v in config_to_dict(base).items() if isinstance(v, dict) and "epochs" in v)
    changes = [f"{section}.epochs=3", "data.extra_test_images=12", "trainer.progress=true"]
    config = spec.config("smoke", overrides=changes)
    variants = list(spec.ablations)[:2]
    words = shlex.split(reproduce_command(RECIPES[name].load(), config, [0, 2], variants))
    assert words[:4] == ["qualcl", "run", name, "--ablation"]
    options = dict(zip(words[4::2], words[5::2], strict=True)) | {"--set": None}
    assert (
        options["--preset"] == "smoke" and options["--seeds"] == "0,2" and options["--variants"] == ",".join(variants)
    )
    sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    assert sorted(sets) == sorted(changes[:2])  # the trainer's options are not part of what was measured
    rebuilt = spec.config("smoke", overrides=sets)
    skip = ("seed", "trainer")
    assert flat_config(config_to_dict(rebuilt), skip) == flat_config(config_to_dict(config), skip)


def test_publish_writes_the_page_records_the_measurement_and_regenerates_the_table(tmp_path, monkeypatch):
    import json

    from qualcl.recipes import claims

    monkeypatch.setattr(claims, "MEASURED", tmp_path / "measured.json")
    docs = tmp_path / "results"
    docs.mkdir()
    (docs / "claims.md").write_text("# Claims\n\nprose\n\n| recipe | claim |\n|---|---|\n| old | row |\n\nafter\n")
    statement = "MKCNet diagnoses better than Vanilla (AUC)"
    result = {"statement": statement, "variant": "mkcnet", "reference": "vanilla", "mean": 0.02, "low": 0.01}
    result |= {"high": 0.03, "pairs": 5, "verdict": "holds", "seeds": [0, 1, 2, 3, 4], "metric": "auc"}
    abl = tmp_path / "abl"
    _ablation_folder(abl, {"mkcnet": {"lr": 0.1}, "vanilla": {"lr": 0.1, "meta": False}}, [result])
    command = "qualcl run mkcnet --ablation --seeds 0,1,2,3,4 --variants mkcnet,vanilla --set train.epochs=40"
    (abl / "ablation.md").write_text(f"# mkcnet ablation\n\n| table |\n\nCommand: `{command}`.\n")
    (abl / "ablation.png").write_bytes(b"png")
    with pytest.raises(ValueError, match="docs must be the results folder"):
        claims.publish(abl, "mkcnet", "mk_e40", "T", "p", docs=tmp_path / "missing")
    page = claims.publish(abl, "mkcnet", "mk_e40", "MKCNet at 40 epochs", "one thread, code abc", docs=docs)
    lines = page.read_text().splitlines()
    plot = "![mkcnet: the claims' metric per seed, overall and per stratum](mk_e40.png)"
    assert lines[:3] == ["# MKCNet at 40 epochs", "", plot]
    assert lines[-1] == f"Command: `{command}` (one thread, code abc)" and "| table |" in lines
    assert (docs / "mk_e40.png").read_bytes() == b"png"
    assert json.loads((docs / "mk_e40.json").read_text())["claims"] == [result]
    assert [m["command"] for m in claims.measurements("mkcnet")] == [command]
    text = (docs / "claims.md").read_text()
    assert claims.table() in text and "| old | row |" not in text and text.endswith("\nafter\n")
    assert f"+0.020 [+0.010, +0.030] | **holds** | `{command}`" in text
    with pytest.raises(ValueError, match="stem 'mk_e40'.*exists"):
        claims.publish(abl, "mkcnet", "mk_e40", "again", "p", docs=docs)
    # a lead: the page only, nothing recorded, the table untouched
    claims.MEASURED.unlink()
    before = (docs / "claims.md").read_text()
    claims.publish(abl, "mkcnet", "mk_lead", "A lead", "p", docs=docs, lead=True)
    assert (docs / "mk_lead.md").is_file() and not claims.MEASURED.exists()
    assert (docs / "claims.md").read_text() == before
    (abl / "ablation.md").write_text("# no command line\n")
    with pytest.raises(ValueError, match="must hold one 'Command:' line, found 0"):
        claims.publish(abl, "mkcnet", "mk_x", "T", "p", docs=docs)


def test_publish_from_the_command_line_refuses_a_folder_without_an_ablation(tmp_path, capsys):
    from qualcl.recipes.claims import main

    with pytest.raises(SystemExit) as raised:
        main(["publish", str(tmp_path), "--recipe", "mkcnet", "--stem", "x", "--title", "T", "--provenance", "p"])
    assert raised.value.code == 2 and "folder must hold a collected ablation" in capsys.readouterr().err


def _recorded():
    from qualcl.recipes.claims import measurements

    return measurements()


@pytest.mark.parametrize("measurement", _recorded(), ids=lambda m: f"{m['recipe']}:{m['page']}")
def test_every_recorded_command_rebuilds_the_configuration_it_measured(measurement):
    """The claims page's command column reproduces each measurement at this code: a default changed since
    it was recorded must be spelled out in its command (``--set key=old``)."""
    import shlex

    from qualcl.recipes import RECIPES
    from qualcl.recipes._cli import build_recipe_parser, config_from_arguments
    from qualcl.recipes.ablation import variant_config
    from qualcl.recipes.claims import config_differences, flat_config
    from qualcl.recipes.config import config_to_dict

    words = shlex.split(measurement["command"])
    assert words[:3] == ["qualcl", "run", measurement["recipe"]]
    parser, spec = build_recipe_parser(RECIPES[measurement["recipe"]], measurement["recipe"])
    args = parser.parse_args(words[3:])  # what `qualcl run` parses and builds
    variants = args.variants.split(",") if args.variants else list(spec.ablations)
    assert args.ablation and set(measurement["configs"]) <= set(variants)
    base = config_from_arguments(spec, args)
    defaults = flat_config(config_to_dict(spec.config_class()))  # settings added since: at their defaults
    for variant, recorded in measurement["configs"].items():
        rebuilt = flat_config(config_to_dict(variant_config(base, spec.ablations, variant, 0)))
        assert config_differences(rebuilt, recorded, defaults) == [], variant
