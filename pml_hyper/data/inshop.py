"""DeepFashion In-shop Clothes Retrieval in its official layout (docs/hier.md#data, #evaluation)."""

from __future__ import annotations

from pathlib import Path

from .base_image_dataset import BaseImageDataset


class InShop(BaseImageDataset):
    """In-shop Clothes Retrieval with the official partition: ``train`` (3,997 items, 25,882
    images), ``query`` (14,218 images) and ``gallery`` (12,612 images); query and gallery hold
    the same 3,985 test items.

    Labels come from the item ids (``id_00000001``): the train items, in sorted id order, are
    0..n−1; the test items are numbered 0..m−1 once over query ∪ gallery, so an item has the same
    label in ``query`` and ``gallery``. Evaluate query against gallery (``INSHOP_K_VALUES``).

    Hierarchy: ``("item", "category", "gender")`` from the image path
    ``img/<gender>/<category>/<item>/...``: category is ``<gender>/<category>`` (e.g.
    ``MEN/Denim``), gender ``MEN`` or ``WOMEN``; both are numbered in sorted name order over all
    splits (names in :attr:`category_names`, :attr:`gender_names`).
    """

    SPLITS = ("train", "query", "gallery")
    LAYOUT = (
        "  <root>/Inshop_Clothes/Eval/list_eval_partition.txt\n"
        "      (line 1: the number of images; line 2: 'image_name item_id evaluation_status';\n"
        "       then one line per image, e.g. 'img/WOMEN/Dresses/id_00000002/02_1_front.jpg\n"
        "       id_00000002 train', the status being train, query or gallery)\n"
        "  <root>/Inshop_Clothes/Img/img/WOMEN/Dresses/id_00000002/02_1_front.jpg ..."
    )
    HEADER = ("image_name", "item_id", "evaluation_status")
    HIERARCHY_LEVELS = ("item", "category", "gender")

    def _load_split(self) -> tuple[list[Path], list[int]]:
        folder = self.root / "Inshop_Clothes"
        list_file = self._require(folder / "Eval" / "list_eval_partition.txt")
        lines = [line.split() for line in list_file.read_text().splitlines()]
        if len(lines) < 2 or tuple(lines[1]) != self.HEADER or not "".join(lines[0]).isdigit():
            raise ValueError(
                f"InShop: {list_file} must start with the image count, then the header line "
                f"{' '.join(self.HEADER)!r}"
            )
        rows = [(number, row) for number, row in enumerate(lines[2:], start=3) if row]
        if int(lines[0][0]) != len(rows):
            raise ValueError(
                f"InShop: {list_file} announces {lines[0][0]} images, lists {len(rows)}"
            )
        for number, row in rows:
            if len(row) != 3 or row[2] not in self.SPLITS:
                raise ValueError(
                    f"InShop: {list_file} line {number} is not 'image_name item_id "
                    f"train|query|gallery': {' '.join(row)!r}"
                )
        rows = [row for _, row in rows]
        label_splits = ("train",) if self.split == "train" else ("query", "gallery")
        items = sorted({item for _, item, status in rows if status in label_splits})
        label_of = {item: label for label, item in enumerate(items)}
        chosen = [(name, item) for name, item, status in rows if status == self.split]
        parts = {name: name.split("/") for name, _, _ in rows}
        if any(len(p) < 5 or p[0] != "img" for p in parts.values()):
            self._coarse_missing = (
                f"{list_file}: image names must look like "
                "'img/<gender>/<category>/<item>/<file>' to give categories and genders"
            )
        else:
            self.category_names = sorted({"/".join(p[1:3]) for p in parts.values()})
            self.gender_names = sorted({p[1] for p in parts.values()})
            category = {n: i for i, n in enumerate(self.category_names)}
            gender = {n: i for i, n in enumerate(self.gender_names)}
            self._coarse = [
                (category["/".join(parts[n][1:3])], gender[parts[n][1]]) for n, _ in chosen
            ]
        return [folder / "Img" / name for name, _ in chosen], [label_of[i] for _, i in chosen]
