"""Tiny-ImageNet builder on a tiny fake archive in the official layout.

Every image is one flat colour, so JPEG keeps it (almost) exactly and the
colour identifies the file it came from after TFDS shuffles the records.
"""

import os
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data import availability
from data import loading
from data import tiny_imagenet
from training.config import TrainConfig
from utils.errors import UsageError

WNIDS = ("n09999999", "n01443537", "n02124075")  # wnids.txt order is not sorted
TRAIN_PER_CLASS = 2
VALIDATION = (("val_0.JPEG", "n02124075"), ("val_1.JPEG", "n01443537"), ("val_2.JPEG", "n02124075"))


def _write_layout(folder):
    """tiny-imagenet-200/ with 3 classes; returns {image id: (colour, wnid)}."""
    root = folder / "tiny-imagenet-200"
    expected = {}
    colour = iter(range(10, 250, 20))

    def save(path, image_id, wnid, grayscale=False):
        value = next(colour)
        path.parent.mkdir(parents=True, exist_ok=True)
        if grayscale:  # the real archive has some
            Image.new("L", (64, 64), value).save(path)
            expected[image_id] = ((value,) * 3, wnid)
        else:
            rgb = (value, 255 - value, value // 2)
            Image.new("RGB", (64, 64), rgb).save(path, quality=95)
            expected[image_id] = (rgb, wnid)

    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("".join(f"{wnid}\n" for wnid in WNIDS))
    (root / "words.txt").write_text("".join(f"{wnid}\tclass {wnid}\n" for wnid in WNIDS))
    for wnid in WNIDS:
        for k in range(TRAIN_PER_CLASS):
            save(root / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", f"{wnid}_{k}", wnid)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    lines = []
    for position, (name, wnid) in enumerate(VALIDATION):
        save(root / "val" / "images" / name, name[: -len(".JPEG")], wnid, grayscale=position == 0)
        lines.append(f"{name}\t{wnid}\t0\t0\t63\t63\n")
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    (root / "test" / "images").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(root / "test" / "images" / "test_0.JPEG")  # unlabeled
    return expected


def _check(examples, expected, split_prefix):
    names = sorted(WNIDS)  # label i = i-th wnid in sorted order, as ImageFolder
    ids = [example["id"].decode() for example in examples]
    assert sorted(ids) == sorted(key for key in expected if key.startswith(split_prefix))
    for example, image_id in zip(examples, ids):
        colour, wnid = expected[image_id]
        assert example["image"].shape == (64, 64, 3) and example["image"].dtype == np.uint8
        assert np.abs(example["image"].astype(int) - colour).max() <= 2
        assert example["label"] == names.index(wnid)


def test_builder_prepares_the_extracted_layout_from_the_manual_dir(tmp_path):
    expected = _write_layout(tmp_path / "manual")
    builder = tfds.builder("tiny_imagenet", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual"))
    )
    reloaded = tfds.builder("tiny_imagenet", data_dir=str(tmp_path / "tfds"))
    assert reloaded.info.features["label"].names == sorted(WNIDS)
    assert {name: split.num_examples for name, split in reloaded.info.splits.items()} == {
        "train": len(WNIDS) * TRAIN_PER_CLASS,
        "test": len(VALIDATION),
    }
    train = list(tfds.as_numpy(reloaded.as_dataset(split="train")))
    test = list(tfds.as_numpy(reloaded.as_dataset(split="test")))
    _check(train, expected, "n")
    _check(test, expected, "val_")


def test_load_arrays_prepares_from_a_zip_in_the_default_manual_dir(tmp_path, monkeypatch):
    def no_network(url):
        raise AssertionError("network probed")

    monkeypatch.setattr(availability, "unreachable_reason", no_network)
    expected = _write_layout(tmp_path / "unzipped")
    manual_dir = tmp_path / "tfds" / "downloads" / "manual"
    manual_dir.mkdir(parents=True)
    with zipfile.ZipFile(manual_dir / tiny_imagenet.ARCHIVE_NAME, "w") as archive:
        for path in sorted((tmp_path / "unzipped").rglob("*")):
            archive.write(path, path.relative_to(tmp_path / "unzipped"))
    config = TrainConfig(dataset="tiny-imagenet", data_dir=str(tmp_path / "tfds"), full_train=True)
    arrays = loading.load_arrays(config)
    assert arrays.image_size == 64 and arrays.num_classes == len(WNIDS)
    assert arrays.evaluation_split == "test" and len(arrays.test_labels) == len(VALIDATION)
    by_colour = {colour: sorted(WNIDS).index(wnid) for colour, wnid in expected.values()}
    images = np.concatenate([arrays.train_images, arrays.test_images])
    labels = np.concatenate([arrays.train_labels, arrays.test_labels])
    for image, label in zip(images, labels):
        colour = min(by_colour, key=lambda c: np.abs(image[0, 0].astype(int) - c).max())
        assert np.abs(image.astype(int) - colour).max() <= 2 and by_colour[colour] == label


def test_find_local_archive_prefers_the_extracted_folder(tmp_path):
    assert tiny_imagenet.find_local_archive(str(tmp_path)) is None
    (tmp_path / tiny_imagenet.ARCHIVE_NAME).write_bytes(b"")
    assert tiny_imagenet.find_local_archive(str(tmp_path)).endswith(".zip")
    _write_layout(tmp_path)
    assert tiny_imagenet.find_local_archive(str(tmp_path)) == str(tmp_path / "tiny-imagenet-200")


def test_missing_archive_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(availability, "unreachable_reason", lambda url: "did not answer within 5 s")
    config = TrainConfig(dataset="tiny-imagenet", data_dir=str(tmp_path))
    with pytest.raises(UsageError) as error:
        loading.check_data_available(config)
    manual_dir = os.path.join(str(tmp_path), "downloads", "manual")
    assert str(error.value) == (
        f"dataset 'tiny-imagenet' is not prepared in {tmp_path} (no tiny_imagenet/1.0.0/dataset_info.json) and "
        "preparing it needs cs231n.stanford.edu, which did not answer within 5 s (offline?); put "
        f"tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip) in {manual_dir} and rerun, "
        "or on a machine with network run `python -m app.prepare tiny-imagenet --data-dir DIR` and copy "
        f"DIR/tiny_imagenet/ into {tmp_path}, or pass --data-dir DIR holding tiny_imagenet/1.0.0"
    )
