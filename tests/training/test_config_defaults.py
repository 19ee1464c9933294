"""Recipes on shared bases (``defaults:``): merge order, list replacement, nested bases, cycle
and missing-base errors, ``pml-hyper train --print-config``, and every shipped recipe resolving."""

import fnmatch
import re
from pathlib import Path

import pytest
import yaml

from pml_hyper.cli import main
from pml_hyper.training import ConfigError, build_config, load_config
from pml_hyper.training.config import (
    DEFAULTS_KEY,
    SCHEMA,
    deep_merge,
    load_recipe,
    recipe_chain,
    recipe_files,
)

ROOT = Path(__file__).resolve().parents[2]
PAPER_DIR = ROOT / "benchmarks" / "paper"
DEMO_DIR = ROOT / "pml_hyper" / "training" / "demo_recipes"
RECIPES = recipe_files(PAPER_DIR) + recipe_files(DEMO_DIR)


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_deep_merge_merges_mappings_and_replaces_lists_and_scalars():
    base = {"a": {"x": 1, "y": {"p": 1, "q": 2}}, "l": [1, 2, 3], "s": "base", "n": {"k": 1}}
    update = {"a": {"y": {"q": 3}, "z": 4}, "l": [9], "s": "recipe", "n": None}
    merged = deep_merge(base, update)
    assert merged == {
        "a": {"x": 1, "y": {"p": 1, "q": 3}, "z": 4},
        "l": [9],
        "s": "recipe",
        "n": None,
    }
    assert base["a"]["y"] == {"p": 1, "q": 2} and base["l"] == [1, 2, 3]  # inputs unchanged


def test_bases_merge_in_order_and_the_recipe_wins(tmp_path):
    _write(tmp_path, "_base/one.yaml", "seed: 1\nschedule: {epochs: 5, warmup_epochs: 1}\n")
    _write(tmp_path, "_base/two.yaml", "seed: 2\nschedule: {epochs: 7}\n")
    recipe = _write(
        tmp_path,
        "run.yaml",
        "defaults: [_base/one.yaml, _base/two.yaml]\nname: run\nschedule: {gamma: 0.1}\n",
    )
    config = load_config(recipe)
    assert config["seed"] == 2  # the later base wins
    assert config["schedule"]["epochs"] == 7
    assert config["schedule"]["warmup_epochs"] == 1  # merged key by key
    assert config["schedule"]["gamma"] == 0.1  # the recipe itself last
    assert config["name"] == "run"
    assert DEFAULTS_KEY not in config and DEFAULTS_KEY not in load_recipe(recipe)
    assert recipe_chain(recipe) == [
        (tmp_path / "_base/one.yaml").resolve(),
        (tmp_path / "_base/two.yaml").resolve(),
        recipe.resolve(),
    ]


def test_lists_replace_not_append(tmp_path):
    _write(
        tmp_path,
        "_base.yaml",
        "eval: {k_values: [1, 2, 4, 8]}\n"
        "loss:\n  terms:\n    - {type: ProxyAnchorLoss}\n    - {type: HIERLoss, weight: 0.5}\n",
    )
    recipe = _write(
        tmp_path,
        "run.yaml",
        "defaults: _base.yaml\neval: {k_values: [1, 10]}\n"
        "loss:\n  terms:\n    - {type: HISTLoss}\n",
    )
    config = load_config(recipe)
    assert config["eval"]["k_values"] == [1, 10]
    assert [t["type"] for t in config["loss"]["terms"]] == ["HISTLoss"]
    assert config["loss"]["terms"][0]["weight"] == 1.0  # the schema's default, not the base's


def test_nested_bases_resolve_relative_to_each_file(tmp_path):
    _write(tmp_path, "bases/family.yaml", "seed: 3\ndata: {dataset: cub200, batch_size: 180}\n")
    _write(
        tmp_path,
        "bases/family_cars.yaml",
        "defaults: family.yaml\ndata: {dataset: cars196}\n",  # relative to bases/
    )
    recipe = _write(tmp_path, "recipes/run.yaml", "defaults: ../bases/family_cars.yaml\n")
    config = load_config(recipe, ["data.batch_size=90"])
    assert (config["seed"], config["data"]["dataset"], config["data"]["batch_size"]) == (
        3,
        "cars196",
        90,  # --set applies after the bases
    )
    assert [p.name for p in recipe_chain(recipe)] == ["family.yaml", "family_cars.yaml", "run.yaml"]


def test_a_base_need_not_be_a_complete_recipe(tmp_path):
    base = _write(tmp_path, "_base.yaml", "optimizer: {lr: 0.5}\n")
    assert load_recipe(base) == {"optimizer": {"lr": 0.5}}
    assert load_config(base)["optimizer"]["lr"] == 0.5


def test_a_cycle_is_an_error_naming_the_files(tmp_path):
    _write(tmp_path, "a.yaml", "defaults: b.yaml\n")
    _write(tmp_path, "b.yaml", "defaults: a.yaml\n")
    recipe = _write(tmp_path, "run.yaml", "defaults: a.yaml\n")
    with pytest.raises(ConfigError, match="defaults cycle") as error:
        load_config(recipe)
    message = str(error.value)
    assert "a.yaml -> " in message and "b.yaml -> " in message
    assert message.endswith("a.yaml")
    with pytest.raises(ConfigError, match="defaults cycle"):
        load_config(_write(tmp_path, "self.yaml", "defaults: self.yaml\n"))


def test_a_missing_base_is_an_error_naming_both_files(tmp_path):
    recipe = _write(tmp_path, "run.yaml", "defaults: [_base/nowhere.yaml]\n")
    with pytest.raises(ConfigError, match="nowhere.yaml") as error:
        load_config(recipe)
    assert str(recipe.resolve()) in str(error.value) and "does not exist" in str(error.value)
    _write(tmp_path, "mid.yaml", "defaults: gone.yaml\n")
    with pytest.raises(ConfigError, match=r"mid\.yaml: base file 'gone\.yaml'"):
        load_config(_write(tmp_path, "top.yaml", "defaults: mid.yaml\n"))


@pytest.mark.parametrize("value", ["3", "[a.yaml, 4]", "{a: b}", "''"])
def test_a_bad_defaults_value_is_an_error(tmp_path, value):
    recipe = _write(tmp_path, "run.yaml", f"defaults: {value}\n")
    with pytest.raises(ConfigError, match="defaults must be a file path or a list"):
        load_config(recipe)


def test_a_base_with_an_unknown_key_is_named(tmp_path):
    _write(tmp_path, "_base.yaml", "model: {backbon: resnet50}\n")
    recipe = _write(tmp_path, "run.yaml", "defaults: _base.yaml\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.backbon'"):
        load_config(recipe)


def test_recipe_files_skip_bases(tmp_path):
    for name in ("b.yaml", "a.yaml", "_base.yaml", "_base_x.yaml", "notes.txt"):
        _write(tmp_path, name, "seed: 1\n")
    _write(tmp_path, "_base/hier.yaml", "seed: 1\n")
    assert [p.name for p in recipe_files(tmp_path)] == ["a.yaml", "b.yaml"]


def test_the_recipe_folders_hold_the_expected_recipes_and_bases():
    assert len(recipe_files(PAPER_DIR)) == 55
    assert {p.stem for p in recipe_files(DEMO_DIR)} == {"pa", "pa_hier", "hist", "hyp", "hyp_hier"}
    assert (DEMO_DIR / "_base.yaml").is_file()
    for family in ("hier", "hyp", "hist"):
        assert (PAPER_DIR / "_base" / f"{family}.yaml").is_file()


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_recipe_starts_from_a_base_and_resolves(path):
    raw = yaml.safe_load(path.read_text())
    assert DEFAULTS_KEY in raw and list(raw)[0] == DEFAULTS_KEY  # a recipe starts with defaults:
    chain = recipe_chain(path)
    assert 2 <= len(chain) <= 3  # at most a family base and a dataset base
    assert all(p.name.startswith("_base") or p.parent.name == "_base" for p in chain[:-1])
    config = load_config(path)  # validates against the schema
    assert set(config) == set(SCHEMA)
    if path.parent == PAPER_DIR:
        assert config["name"] == path.stem


def test_print_config_prints_the_resolved_recipe(capsys):
    path = PAPER_DIR / "hier_cub_r50.yaml"
    assert main(["train", str(path), "--print-config", "--set", "schedule.epochs=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == load_config(path, ["schedule.epochs=3"])
    assert printed["schedule"]["epochs"] == 3 and DEFAULTS_KEY not in printed


def test_print_config_reports_a_missing_base(tmp_path, capsys):
    recipe = _write(tmp_path, "run.yaml", "defaults: _base/missing.yaml\n")
    assert main(["train", str(recipe), "--print-config"]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_the_demo_base_is_package_data():
    setup = (ROOT / "setup.py").read_text()
    patterns = re.search(r'"pml_hyper.training": \[([^\]]*)\]', setup).group(1)
    patterns = re.findall(r'"([^"]+)"', patterns)
    for path in DEMO_DIR.glob("*.yaml"):
        assert any(fnmatch.fnmatch(f"demo_recipes/{path.name}", p) for p in patterns), path.name


def test_build_config_refuses_unresolved_defaults():
    with pytest.raises(ConfigError, match="use load_config"):
        build_config({DEFAULTS_KEY: "_base.yaml"})
