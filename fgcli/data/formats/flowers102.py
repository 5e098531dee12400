"""Oxford Flowers-102.

Layout: `jpg/image_00001.jpg` .. `image_08189.jpg` (102flowers.tgz), `imagelabels.mat` (`labels`, 1..102 per
image) and `setid.mat` (`trnid`, `valid`, `tstid`: 1-based image numbers). The official split has a
validation set (train 1020 / val 1020 / test 6149). Class names are the dataset's published names.
"""

from __future__ import annotations

from pathlib import Path

from fgcli.data.formats.base import RawDataset, classes_with_images, find_root, require_root
from fgcli.data.formats.matfile import load_mat, mat_field, numbers
from fgcli.data.manifest import Sample
from fgcli.errors import UserError

SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}

CLASS_NAMES = [
    "pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold",
    "tiger lily", "moon orchid", "bird of paradise", "monkshood", "globe thistle", "snapdragon", "colt's foot",
    "king protea", "spear thistle", "yellow iris", "globe-flower", "purple coneflower", "peruvian lily",
    "balloon flower", "giant white arum lily", "fire lily", "pincushion flower", "fritillary", "red ginger",
    "grape hyacinth", "corn poppy", "prince of wales feathers", "stemless gentian", "artichoke",
    "sweet william", "carnation", "garden phlox", "love in the mist", "mexican aster", "alpine sea holly",
    "ruby-lipped cattleya", "cape flower", "great masterwort", "siam tulip", "lenten rose", "barbeton daisy",
    "daffodil", "sword lily", "poinsettia", "bolero deep blue", "wallflower", "marigold", "buttercup",
    "oxeye daisy", "common dandelion", "petunia", "wild pansy", "primula", "sunflower", "pelargonium",
    "bishop of llandaff", "gaura", "geranium", "orange dahlia", "pink-yellow dahlia?", "cautleya spicata",
    "japanese anemone", "black-eyed susan", "silverbush", "californian poppy", "osteospermum", "spring crocus",
    "bearded iris", "windflower", "tree poppy", "gazania", "azalea", "water lily", "rose", "thorn apple",
    "morning glory", "passion flower", "lotus", "toad lily", "anthurium", "frangipani", "clematis", "hibiscus",
    "columbine", "desert-rose", "tree mallow", "magnolia", "cyclamen", "watercress", "canna lily",
    "hippeastrum", "bee balm", "ball moss", "foxglove", "bougainvillea", "camellia", "mallow",
    "mexican petunia", "bromelia", "blanket flower", "trumpet creeper", "blackberry lily",
]


def is_root(folder: Path) -> bool:
    return (folder / "imagelabels.mat").is_file() and (folder / "setid.mat").is_file()


def detect(src: Path) -> Path | None:
    return find_root(src, is_root)


def read(src: Path, **_: object) -> RawDataset:
    root = require_root(src, "flowers102", is_root, "imagelabels.mat, setid.mat and jpg/ (the Flowers-102 "
                        "folder)")
    label_file, setid_file = root / "imagelabels.mat", root / "setid.mat"
    labels = numbers(mat_field(load_mat(label_file), "labels", label_file), label_file, "labels")
    bad = [v for v in labels if not 1 <= v <= len(CLASS_NAMES)]
    if bad:
        raise UserError(f"{label_file}: label {bad[0]} is out of range 1..{len(CLASS_NAMES)}.")
    setid = load_mat(setid_file)
    splits: dict[str, list[Sample]] = {}
    owner: dict[int, str] = {}
    for split, key in SPLIT_KEYS.items():
        samples = []
        for number in numbers(mat_field(setid, key, setid_file), setid_file, key):
            if not 1 <= number <= len(labels):
                raise UserError(f"{setid_file}: {key} lists image {number}, but imagelabels.mat has "
                                f"{len(labels)} labels.")
            if number in owner:
                raise UserError(f"{setid_file}: image {number} is in both {owner[number]} and {split}.")
            owner[number] = split
            samples.append(Sample(f"jpg/image_{number:05d}.jpg", labels[number - 1] - 1))
        splits[split] = samples
    classes_with_images(CLASS_NAMES, splits, str(root))
    return RawDataset(name=root.name, format="flowers102", root=root, classes=list(CLASS_NAMES), splits=splits,
                      index_files=[label_file, setid_file])
