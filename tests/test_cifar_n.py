"""CIFAR-N: the prepared manual directory against the release files, TFDS's own
builder code run on it, and the label noise of the prepared CIFAR-10N.

Release files: shared/data/cifar-n (as published). The `.pt` files are checked
through their own arrays, the CSVs through `np.genfromtxt` (what the TFDS
builders call), the `_ordered.npy` through `np.load`.
"""

import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data import availability
from data import cifar_n
from data import loading
from training.config import TrainConfig
from utils.errors import UsageError

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
CIFAR_N_DIR = os.path.join(SHARED, "cifar-n")
TFDS_DIR = os.path.join(SHARED, "tfds")
pytestmark = pytest.mark.skipif(not os.path.isdir(CIFAR_N_DIR), reason="needs the CIFAR-N release files in ../shared/data/cifar-n (see README, Test)")


def _release_copy(tmp_path, without=()):
    folder = tmp_path / "release"
    folder.mkdir()
    for name in os.listdir(CIFAR_N_DIR):
        if name not in without:
            shutil.copy(os.path.join(CIFAR_N_DIR, name), folder / name)
    return str(folder)


def _csv_columns(path):
    with open(path) as file:
        header = file.readline().strip().split(",")
    return header, np.genfromtxt(path, delimiter=",", skip_header=1, dtype=np.int64)


def test_cifar100n_manual_dir_equals_the_manual_conversion(tmp_path):
    manual_dir = str(tmp_path / "manual")
    written = cifar_n.prepare_manual_dir("cifar100n", manual_dir, CIFAR_N_DIR)
    assert sorted(os.listdir(manual_dir)) == sorted(os.path.basename(path) for path in written)
    for name in ("side_info_cifar100N.csv", "image_order_c100.npy"):
        assert _bytes(os.path.join(manual_dir, name)) == _bytes(os.path.join(CIFAR_N_DIR, name))
    ordered_path = os.path.join(CIFAR_N_DIR, "CIFAR-100_human_ordered.npy")
    ordered = np.load(ordered_path, allow_pickle=True)[()]
    header, values = _csv_columns(os.path.join(manual_dir, "CIFAR-100_human_annotations.csv"))
    assert header == list(ordered) == ["clean_label", "noise_label"]
    for column, name in enumerate(header):
        assert np.array_equal(values[:, column], ordered[name])


def test_the_pt_file_gives_the_same_csv_as_the_ordered_npy(tmp_path):
    from_npy = cifar_n.prepare_manual_dir("cifar100n", str(tmp_path / "a"), CIFAR_N_DIR)
    release = _release_copy(tmp_path, without=("CIFAR-100_human_ordered.npy",))
    from_pt = cifar_n.prepare_manual_dir("cifar100n", str(tmp_path / "b"), release)
    assert [_bytes(path) for path in from_npy] == [_bytes(path) for path in from_pt]


def test_cifar10n_csv_is_the_pt_labels_in_image_order(tmp_path):
    manual_dir = str(tmp_path / "manual")
    cifar_n.prepare_manual_dir("cifar10n", manual_dir, CIFAR_N_DIR)
    human = cifar_n.load_pt(os.path.join(CIFAR_N_DIR, "CIFAR-10_human.pt"))
    order = np.load(os.path.join(CIFAR_N_DIR, "image_order_c10.npy"))
    header, values = _csv_columns(os.path.join(manual_dir, "CIFAR-10_human_annotations.csv"))
    assert header == list(human)  # the builder reads columns 1-5 as aggre, worse, random1-3
    for column, name in enumerate(header):
        assert np.array_equal(values[:, column], human[name][order])


def test_preparing_twice_is_a_no_op_but_a_different_user_file_is_kept(tmp_path):
    manual_dir = tmp_path / "manual"
    cifar_n.prepare_manual_dir("cifar100n", str(manual_dir), CIFAR_N_DIR)
    cifar_n.prepare_manual_dir("cifar100n", str(manual_dir), CIFAR_N_DIR)
    user_file = manual_dir / "CIFAR-100_human_annotations.csv"
    user_file.write_text("clean_label,noise_label\n1,2\n")
    message = "CIFAR-100_human_annotations.csv exists and differs .* not overwritten"
    with pytest.raises(UsageError, match=message):
        cifar_n.prepare_manual_dir("cifar100n", str(manual_dir), CIFAR_N_DIR)
    assert user_file.read_text() == "clean_label,noise_label\n1,2\n"


def test_a_ready_manual_dir_needs_no_release_files(tmp_path):
    manual_dir = str(tmp_path / "manual")
    cifar_n.prepare_manual_dir("cifar100n", manual_dir, CIFAR_N_DIR)
    assert cifar_n.manual_dir_is_ready("cifar100n", manual_dir)
    cifar_n.prepare_manual_dir("cifar100n", manual_dir)  # would download if not ready


def test_a_missing_file_is_named_with_where_to_get_it(tmp_path):
    release = _release_copy(tmp_path, without=("image_order_c100.npy",))
    with pytest.raises(UsageError) as error:
        cifar_n.prepare_manual_dir("cifar100n", str(tmp_path / "manual"), release)
    assert str(error.value) == (
        f"CIFAR-N file image_order_c100.npy is missing from {release}; download it from "
        "https://github.com/UCSC-REAL/cifar-10-100n/raw/main/image_order_c100.npy"
    )
    assert not os.path.exists(tmp_path / "manual")


def test_neither_pt_nor_ordered_npy_names_the_pt_file(tmp_path):
    release = _release_copy(tmp_path, without=("CIFAR-100_human.pt", "CIFAR-100_human_ordered.npy"))
    message = r"CIFAR-100_human.pt is missing from .*/raw/main/data/CIFAR-100_human.pt$"
    with pytest.raises(UsageError, match=message):
        cifar_n.check_sources("cifar100n", release)


@pytest.mark.parametrize(
    "name, keep_bytes",
    [
        ("CIFAR-10_human.pt", 100_000),
        ("image_order_c10.npy", 1000),
        ("side_info_cifar10N.csv", 5000),
    ],
)
def test_a_truncated_file_is_one_line_naming_it(tmp_path, name, keep_bytes):
    release = _release_copy(tmp_path)
    path = os.path.join(release, name)
    with open(path, "r+b") as file:
        file.truncate(keep_bytes)
    message = f"CIFAR-N file {name} .*incomplete.*download it again from https://"
    with pytest.raises(UsageError, match=message) as error:
        cifar_n.prepare_manual_dir("cifar10n", str(tmp_path / "manual"), release)
    assert "\n" not in str(error.value)


def test_pickles_with_other_globals_are_refused(tmp_path):
    import pickle

    path = tmp_path / "evil.npy"
    np.save(path, np.array(print, dtype=object), allow_pickle=True)
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle builtins.print"):
        cifar_n.load_pickled_npy(str(path))


# --- TFDS's own cifar100_n builder on the prepared manual directory ----------


def _fake_cifar100_binary(folder, num_train=12, num_test=4):
    """cifar-100-binary/ with images whose first pixel is the example's index."""
    root = folder / "cifar-100-binary"
    root.mkdir(parents=True)
    for split, count in (("train", num_train), ("test", num_test)):
        records = bytearray()
        for index in range(count):
            image = np.zeros((3, 32, 32), np.uint8)
            image[:, 0, 0] = index
            records += bytes([index % 20, (7 * index) % 100]) + image.tobytes()  # coarse, fine
        (root / f"{split}.bin").write_bytes(bytes(records))
    (root / "coarse_label_names.txt").write_text("".join(f"coarse{i}\n" for i in range(20)))
    (root / "fine_label_names.txt").write_text("".join(f"fine{i}\n" for i in range(100)))
    return str(folder)


def test_tfds_cifar100_n_builder_reads_the_prepared_labels(tmp_path, monkeypatch):
    """The whole path offline: manual dir, TFDS's builder, our loader; only the
    CIFAR-100 download is replaced by 12 fake images."""
    fake = _fake_cifar100_binary(tmp_path / "download")
    monkeypatch.setattr(
        tfds.download.DownloadManager, "download_and_extract", lambda self, url: fake
    )
    monkeypatch.setattr(availability, "unreachable_reason", lambda url: None)
    config = TrainConfig(
        dataset="cifar100n",
        data_dir=str(tmp_path / "tfds"),
        cifar_n_dir=CIFAR_N_DIR,
        full_train=True,
    )
    arrays = loading.load_arrays(config)
    noisy = cifar_n.load_pt(os.path.join(CIFAR_N_DIR, "CIFAR-100_human.pt"))["noisy_label"]
    train_index = arrays.train_images[:, 0, 0, 0]
    assert sorted(train_index) == list(range(12))
    assert np.array_equal(arrays.train_labels, noisy[train_index])  # the .pt is in image order
    test_index = arrays.test_images[:, 0, 0, 0]
    assert np.array_equal(arrays.test_labels, (7 * test_index) % 100)  # clean fine labels
    assert arrays.num_classes == 100


# --- the prepared CIFAR-10N --------------------------------------------------


@pytest.fixture(scope="module")
def cifar10n():
    """Labels of the prepared cifar10_n in record order, images left encoded."""
    if not os.path.isdir(os.path.join(TFDS_DIR, "cifar10_n")):
        pytest.skip("needs the prepared cifar10_n in ../shared/data/tfds (see README, Test)")
    return {
        split: tfds.as_numpy(
            tfds.load(
                "cifar10_n",
                split=split,
                data_dir=TFDS_DIR,
                batch_size=-1,
                download=False,
                decoders={"image": tfds.decode.SkipDecoding()},
            )
        )
        for split in ("train", "test")
    }


def test_cifar10n_worse_labels_are_40_21_percent_wrong_and_test_labels_clean(cifar10n):
    config = TrainConfig(dataset="cifar10n", data_dir=TFDS_DIR, full_train=True)
    arrays = loading.load_arrays(config)
    train, test = cifar10n["train"], cifar10n["test"]
    assert np.array_equal(arrays.train_labels, train["worse_label"])
    assert np.mean(arrays.train_labels != train["label"]) == pytest.approx(0.4021, abs=5e-5)
    assert np.array_equal(arrays.test_labels, test["label"])
    assert (test["worse_label"] == -1).all()  # what the test split holds instead of human labels


def test_prepared_cifar10n_agrees_with_the_release_by_id(cifar10n):
    human = cifar_n.load_pt(os.path.join(CIFAR_N_DIR, "CIFAR-10_human.pt"))
    index = np.array([int(name[len(b"train_") :]) for name in cifar10n["train"]["id"]])
    for key in ("clean_label", "worse_label", "aggre_label", "random_label1"):
        column = "label" if key == "clean_label" else key
        assert np.array_equal(cifar10n["train"][column], human[key][index])


def _bytes(path):
    with open(path, "rb") as file:
        return file.read()


def test_each_noisy_label_reaches_the_image_it_was_given_for(cifar10n):
    """By record id: the cifar10_n image is CIFAR-10's image of that id (the same JPEG
    bytes), its clean label is CIFAR-10's, and the run's arrays pair that image with
    the release's worse label for that id."""
    clean = tfds.as_numpy(tfds.load("cifar10", split="train", data_dir=TFDS_DIR, batch_size=-1, download=False,
                                    decoders={"image": tfds.decode.SkipDecoding()}))
    by_id = {name: (image, label) for name, image, label in zip(clean["id"], clean["image"], clean["label"])}
    train = cifar10n["train"]
    for name, image, label in zip(train["id"], train["image"], train["label"]):
        assert by_id[name][0] == image and by_id[name][1] == label
    human = cifar_n.load_pt(os.path.join(CIFAR_N_DIR, "CIFAR-10_human.pt"))
    arrays = loading.load_arrays(TrainConfig(dataset="cifar10n", data_dir=TFDS_DIR, full_train=True))
    rng = np.random.default_rng(0)
    for position in rng.choice(len(train["id"]), 200, replace=False):
        k = int(train["id"][position][len(b"train_"):])
        decoded = tf_decode(by_id[train["id"][position]][0])
        np.testing.assert_array_equal(arrays.train_images[position], decoded)
        assert arrays.train_labels[position] == human["worse_label"][k]


def tf_decode(jpeg):
    import tensorflow as tf

    return tf.io.decode_jpeg(jpeg, channels=3).numpy()
