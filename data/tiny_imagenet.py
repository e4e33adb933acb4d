"""TFDS builder for Tiny-ImageNet (200 classes, 64x64 RGB), which TFDS lacks.

Reads the official `tiny-imagenet-200.zip` layout:

    tiny-imagenet-200/wnids.txt                      one WordNet id per line
    tiny-imagenet-200/words.txt                      wnid <tab> description
    tiny-imagenet-200/train/<wnid>/images/<wnid>_<k>.JPEG          100,000
    tiny-imagenet-200/val/images/val_<k>.JPEG                       10,000
    tiny-imagenet-200/val/val_annotations.txt        file <tab> wnid <tab> bbox
    tiny-imagenet-200/test/images/test_<k>.JPEG      unlabeled, not used

Splits: `train` (100,000) and `test` = the official validation set (10,000),
the set papers report as "test" because the official test labels were never
released. Label `i` is the i-th wnid in sorted order, the order
`torchvision.datasets.ImageFolder` gives the `train/` folders, so class
indices match the PyTorch pipelines the papers used. The JPEG bytes are stored
unchanged; the few grayscale images become RGB when decoded (3 channels).

The archive is taken, in this order, from the manual directory
(`<data_dir>/downloads/manual/`): an extracted `tiny-imagenet-200/` folder or
`tiny-imagenet-200.zip`; otherwise it is downloaded from the CS231n site.

Example:

    import data.tiny_imagenet  # registers "tiny_imagenet" with TFDS
    dataset = tfds.load("tiny_imagenet", split="train", data_dir=...)
"""

import os

import tensorflow_datasets as tfds

from data.datasets import TINY_IMAGENET_ARCHIVE as ARCHIVE_NAME
from data.datasets import TINY_IMAGENET_ROOT as ROOT_NAME
from data.datasets import TINY_IMAGENET_URL as URL
from data.datasets import find_tiny_imagenet_archive as find_local_archive

IMAGE_SHAPE = (64, 64, 3)


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
    """Tiny-ImageNet-200: `train` and `test` (= the official val set)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: train and the official val set as test."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Optional: put {ARCHIVE_NAME} (from {URL}), or its extracted {ROOT_NAME}/
    folder, in the manual directory to prepare the dataset without a download.
    """

    def _info(self):
        return self.dataset_info_from_configs(
            description="Tiny-ImageNet-200: 200 ImageNet classes at 64x64.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=IMAGE_SHAPE, encoding_format="jpeg"),
                    # Names (hence the number of classes) come from wnids.txt.
                    "label": tfds.features.ClassLabel(),
                    "id": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://cs231n.stanford.edu/",
        )

    def _split_generators(self, dl_manager):
        root = os.path.join(os.fspath(self._archive_path(dl_manager)), ROOT_NAME)
        with open(os.path.join(root, "wnids.txt")) as file:
            wnids = sorted(line.strip() for line in file if line.strip())
        self.info.features["label"].names = wnids
        return {
            "train": self._generate_examples(_train_files(root, wnids)),
            "test": self._generate_examples(_validation_files(root)),
        }

    def _archive_path(self, dl_manager):
        try:
            manual_dir = dl_manager.manual_dir
        except AssertionError:  # TFDS's way of saying "no manual directory"
            manual_dir = None
        local = find_local_archive(manual_dir)
        if local is None:
            return dl_manager.download_and_extract(URL)
        if local.endswith(".zip"):
            return dl_manager.extract(local)
        return os.path.dirname(local)

    def _generate_examples(self, files):
        for path, wnid in files:
            name = os.path.basename(path)
            yield name, {"image": path, "label": wnid, "id": os.path.splitext(name)[0]}


def _train_files(root, wnids):
    for wnid in wnids:
        folder = os.path.join(root, "train", wnid, "images")
        for name in sorted(os.listdir(folder)):
            yield os.path.join(folder, name), wnid


def _validation_files(root):
    with open(os.path.join(root, "val", "val_annotations.txt")) as file:
        for line in file:
            if line.strip():
                name, wnid = line.split("\t")[:2]
                yield os.path.join(root, "val", "images", name), wnid
