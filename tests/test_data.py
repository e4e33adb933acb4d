"""Data layer: split, statistics, pipeline and error lines, each against NumPy.

The real CIFAR-10 of shared/data/tfds is read once per module; everything else
uses a few synthetic images.
"""

import hashlib
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data import availability
from data import datasets
from data import loading
from data import pipeline
from training.config import TrainConfig
from utils.errors import UsageError

TFDS_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tfds")
needs_cifar10 = pytest.mark.skipif(
    not os.path.isdir(os.path.join(TFDS_DIR, "cifar10")), reason="needs the prepared cifar10 in ../shared/data/tfds (see README, Test)"
)


def _arrays(num_examples=10, size=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num_examples, size, size, 3), dtype=np.uint8)
    labels = np.arange(num_examples, dtype=np.int32)  # label = example id
    mean, std = loading.channel_stats(images)
    return loading.Arrays(
        images, labels, images, labels, images, labels, num_examples, "validation", mean, std
    )


def _train(arrays, batch_size, seed, **position):
    return pipeline.train_dataset(
        arrays.train_images, arrays.train_labels, arrays.mean, arrays.std, batch_size, seed,
        **position,
    )


def _unnormalize(batch, mean, std):
    return np.rint((np.asarray(batch) * std + mean) * 255).astype(np.int64)


# --- split and statistics ----------------------------------------------------


def test_split_is_disjoint_covers_everything_and_is_exactly_80_20():
    train, validation = loading.split_indices(50_000, 0.2, seed=0)
    assert len(train) == 40_000 and len(validation) == 10_000
    assert np.array_equal(np.union1d(train, validation), np.arange(50_000))
    assert len(np.intersect1d(train, validation)) == 0


def test_split_depends_on_the_split_seed_only():
    same = loading.split_indices(1000, 0.2, seed=3), loading.split_indices(1000, 0.2, seed=3)
    other = loading.split_indices(1000, 0.2, seed=4)
    assert np.array_equal(same[0][1], same[1][1])
    assert not np.array_equal(same[0][1], other[1])


def test_channel_stats_match_numpy():
    images = np.random.default_rng(1).integers(0, 256, (7, 5, 4, 3), dtype=np.uint8)
    pixels = images.reshape(-1, 3).astype(np.float64) / 255
    mean, std = loading.channel_stats(images)
    np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(std, pixels.std(axis=0), rtol=1e-6)


# --- pipeline ----------------------------------------------------------------


def test_evaluation_batches_are_normalized_in_order_with_a_last_partial_batch():
    arrays = _arrays(num_examples=10)
    dataset = pipeline.evaluation_dataset(
        arrays.test_images, arrays.test_labels, arrays.mean, arrays.std, batch_size=4
    )
    batches = list(dataset)
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    images = np.concatenate([np.asarray(x) for x, _ in batches])
    expected = (arrays.test_images / 255.0 - arrays.mean.astype(np.float64)) / arrays.std
    np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-5)
    assert images.dtype == np.float32
    assert np.array_equal(np.concatenate([y for _, y in batches]), np.arange(10))


def test_train_epochs_are_reshuffled_permutations_reproducible_from_the_seed():
    arrays = _arrays(num_examples=10)

    def epochs(seed, count=2):
        dataset = _train(arrays, batch_size=4, seed=seed, num_epochs=count)
        labels = [np.asarray(y).tolist() for _, y in dataset]
        return [labels[3 * epoch : 3 * epoch + 3] for epoch in range(count)]

    first, second = epochs(seed=0)
    assert [len(batch) for batch in first] == [4, 4, 2]
    assert sorted(sum(first, [])) == list(range(10)) == sorted(sum(second, []))
    assert first != second
    assert epochs(seed=0) == [first, second]
    assert epochs(seed=1)[0] != first


def test_a_stream_started_later_sees_exactly_the_remaining_batches():
    arrays = _arrays(num_examples=10)
    whole = list(_train(arrays, batch_size=4, seed=5, num_epochs=3))
    resumed = list(_train(arrays, batch_size=4, seed=5, start_epoch=1, skip_batches=2, num_epochs=2))
    assert len(whole) == 9 and len(resumed) == 4
    for (x_whole, y_whole), (x_resumed, y_resumed) in zip(whole[5:], resumed):
        np.testing.assert_array_equal(np.asarray(y_whole), np.asarray(y_resumed))
        np.testing.assert_array_equal(np.asarray(x_whole), np.asarray(x_resumed))


def test_train_images_are_flipped_random_windows_of_the_zero_padded_image():
    arrays = _arrays(num_examples=64)
    offsets, flips = [], []
    for images, labels in _train(arrays, batch_size=32, seed=0, num_epochs=1):
        for image, label in zip(_unnormalize(images, arrays.mean, arrays.std), np.asarray(labels)):
            padded = np.pad(arrays.train_images[label], [(4, 4), (4, 4), (0, 0)])
            matches = []
            for dy in range(9):
                for dx in range(9):
                    window = padded[dy : dy + 8, dx : dx + 8]
                    for flip, candidate in ((False, window), (True, window[:, ::-1])):
                        if np.array_equal(image, candidate):
                            matches.append((dy, dx, flip))
            assert len(matches) == 1
            offsets.append(matches[0][:2])
            flips.append(matches[0][2])
    assert 0.25 < np.mean(flips) < 0.75
    assert len(set(offsets)) > 20  # the 81 offsets are all possible


def test_random_crop_flip_pads_with_zeros():
    import tensorflow as tf

    white = np.full((16, 4, 4, 3), 255, np.uint8)
    crops = np.asarray(pipeline.random_crop_flip(tf.constant(white), tf.constant([1, 2])))
    padded_pixels = (crops == 0).all(axis=-1)
    assert padded_pixels.any() and ((crops == 0) | (crops == 255)).all()


def test_make_data_counts_steps_with_the_last_partial_batch():
    arrays = _arrays(num_examples=10)
    result = pipeline.make_data(arrays, batch_size=4, seed=0)
    assert result.steps_per_epoch == 3 == len(list(result.train_one_pass))
    assert len(list(result.train.take(7))) == 7  # endless: fit cuts it into epochs
    assert (result.num_train_examples, result.num_validation_examples) == (10, 10)


# --- errors ------------------------------------------------------------------


def _no_network(monkeypatch):
    monkeypatch.setattr(availability, "unreachable_reason", lambda url: "did not answer within 5 s")


def test_the_network_probe_says_why_a_host_cannot_be_reached(monkeypatch):
    """A refused connection is reported as such, not as a timeout (issue 31: it answered at once)."""
    import socket

    monkeypatch.setattr(availability.urllib.request, "getproxies", lambda: {})  # straight to 127.0.0.1

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]  # bound, not listening: connections are refused
        reason = availability.unreachable_reason(f"http://127.0.0.1:{port}/file", timeout=5)
    assert reason.startswith("could not be reached (") and "refused" in reason.lower()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert availability.unreachable_reason(f"http://127.0.0.1:{server.getsockname()[1]}/", timeout=5) is None


@pytest.mark.parametrize("check", [availability.check, loading.check_data_available],
                         ids=["without TFDS", "asking TFDS"])
def test_missing_dataset_fails_in_one_line_without_downloading(tmp_path, monkeypatch, check):
    _no_network(monkeypatch)
    config = TrainConfig(dataset="cifar100", data_dir=str(tmp_path))
    with pytest.raises(UsageError) as error:
        check(config)
    assert str(error.value) == (
        f"dataset 'cifar100' is not prepared in {tmp_path} (no cifar100/3.0.2/dataset_info.json) and preparing "
        "it needs www.cs.toronto.edu, which did not answer within 5 s (offline?); on a machine with network run "
        f"`python -m app.prepare cifar100 --data-dir DIR` and copy DIR/cifar100/ into {tmp_path}, or pass "
        "--data-dir DIR holding cifar100/3.0.2"
    )
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("check", [availability.check, loading.check_data_available],
                         ids=["without TFDS", "asking TFDS"])
def test_cifar100n_offline_names_what_is_missing_and_how_to_prepare_it(tmp_path, monkeypatch, check):
    # The annotations are there (--cifar-n-dir): the CIFAR-100 images are what is missing.
    _no_network(monkeypatch)
    files = tmp_path / "cifar-n"
    files.mkdir()
    for name in ("side_info_cifar100N.csv", "image_order_c100.npy", "CIFAR-100_human.pt"):
        (files / name).write_bytes(b"x")
    data = tmp_path / "tfds"
    config = TrainConfig(dataset="cifar100n", data_dir=str(data), cifar_n_dir=str(files))
    with pytest.raises(UsageError) as error:
        check(config)
    message = str(error.value)
    assert "\n" not in message
    assert f"the CIFAR-N annotations in --cifar-n-dir {files} are complete; the CIFAR-100 images are what is missing" in message
    assert (f"run `python -m app.prepare cifar100n --data-dir DIR --cifar-n-dir {files}` and copy "
            f"DIR/cifar100_n/ into {data}") in message
    assert "www.cs.toronto.edu, which did not answer" in message


@pytest.mark.parametrize("dataset", sorted(datasets.DATASETS))
def test_the_versions_looked_for_are_those_tfds_builds(dataset):
    spec = datasets.DATASETS[dataset]
    assert str(tfds.builder_cls(spec.tfds_name).VERSION) == spec.version


def test_the_default_data_dir_is_tfds_own(monkeypatch, tmp_path):
    from tensorflow_datasets.core import constants

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    assert availability.data_dir_root(None) == constants.get_default_data_dir() == str(tmp_path)
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert availability.data_dir_root(None) == constants.get_default_data_dir()
    assert availability.data_dir_root(str(tmp_path)) == str(tmp_path)


def test_another_prepared_version_is_left_to_tfds(tmp_path, monkeypatch):
    _no_network(monkeypatch)
    old = tmp_path / "cifar10" / "3.0.1"
    old.mkdir(parents=True)
    (old / availability.INFO_FILE).write_text("{}")
    assert availability.check(TrainConfig(dataset="cifar10", data_dir=str(tmp_path))) is None


def test_a_failed_download_becomes_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(availability, "unreachable_reason", lambda url: None)

    def fail(self, **kwargs):
        raise ConnectionError("Max retries exceeded\nwith url")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)
    with pytest.raises(UsageError) as error:
        loading.load_arrays(TrainConfig(dataset="cifar10", data_dir=str(tmp_path)))
    assert "could not be prepared (Max retries exceeded)" in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_dataset_label_noise_and_fraction_are_usage_errors():
    with pytest.raises(UsageError, match="unknown dataset 'cifar-100'; choose from cifar10, "):
        loading.check_data_available(TrainConfig(dataset="cifar-100"))
    with pytest.raises(UsageError, match="unknown label noise 'worst'; choose from worse, aggre"):
        datasets.train_label_key(TrainConfig(dataset="cifar10n", label_noise="worst"))
    with pytest.raises(UsageError, match=r"validation fraction must be in \(0, 1\), got 1.0"):
        datasets.train_label_key(TrainConfig(validation_fraction=1.0))


def test_train_label_keys():
    noisy = {
        noise: datasets.train_label_key(TrainConfig(dataset="cifar10n", label_noise=noise))
        for noise in datasets.CIFAR10N_LABELS
    }
    assert noisy == {
        "worse": "worse_label",
        "aggre": "aggre_label",
        "random1": "random_label1",
        "random2": "random_label2",
        "random3": "random_label3",
    }
    assert datasets.train_label_key(TrainConfig(dataset="cifar100n")) == "noise_label"
    assert datasets.train_label_key(TrainConfig(dataset="cifar100")) == "label"


# --- the real CIFAR-10 -------------------------------------------------------


@pytest.fixture(scope="module")
def cifar10():
    """The prepared CIFAR-10 read independently of data.loading, in TFDS record order."""
    if not os.path.isdir(os.path.join(TFDS_DIR, "cifar10")):
        pytest.skip("needs the prepared cifar10 in ../shared/data/tfds (see README, Test)")
    load = dict(data_dir=TFDS_DIR, batch_size=-1, download=False)
    return {
        split: tfds.as_numpy(tfds.load("cifar10", split=split, **load))
        for split in ("train", "test")
    }


@pytest.fixture
def read_from(cifar10, monkeypatch):
    """`load_arrays` reads the module's copy instead of decoding 60,000 JPEGs per test."""

    def read_split(builder, split, label_key, indices=None):
        images, labels = cifar10[split]["image"], cifar10[split][label_key].astype(np.int32)
        return (images, labels) if indices is None else (images[indices], labels[indices])

    monkeypatch.setattr(loading, "_read_split", read_split)


@needs_cifar10
def test_read_split_returns_the_tfds_images_and_labels(cifar10):
    builder = tfds.builder("cifar10", data_dir=TFDS_DIR)
    images, labels = loading._read_split(builder, "test", "label")
    assert np.array_equal(images, cifar10["test"]["image"]) and labels.dtype == np.int32
    assert np.array_equal(labels, cifar10["test"]["label"])
    # Decoding only some examples: TFDS's own decoding of those rows, in the order asked for.
    indices = np.array([49_999, 3, 17, 3, 0])
    images, labels = loading._read_split(builder, "train", "label", indices)
    assert np.array_equal(images, cifar10["train"]["image"][indices])
    assert np.array_equal(labels, cifar10["train"]["label"][indices]) and labels.dtype == np.int32
    images, labels = loading._read_split(builder, "train", "label", np.array([], np.int64))
    assert images.shape == (0, 32, 32, 3) and images.dtype == np.uint8 and labels.shape == (0,)


def _digests(images, labels):
    return sorted(
        hashlib.sha1(image.tobytes() + bytes([label])).hexdigest()
        for image, label in zip(images, labels)
    )


@needs_cifar10
def test_prepared_data_never_touches_the_network(monkeypatch):
    def no_network(url):
        raise AssertionError("network probed")

    monkeypatch.setattr(availability, "unreachable_reason", no_network)
    builder = loading.check_data_available(TrainConfig(dataset="cifar10", data_dir=TFDS_DIR))
    assert builder.is_prepared()
    sizes = availability.check(TrainConfig(dataset="cifar10", data_dir=TFDS_DIR))
    assert sizes == {name: split.num_examples for name, split in builder.info.splits.items()}
    assert sizes == {"train": 50_000, "test": 10_000}
    for name in ("cifar10", "cifar10n"):
        config = TrainConfig(dataset=name, data_dir=TFDS_DIR)
        assert availability.check(config)["train"] == datasets.DATASETS[name].train_examples


@needs_cifar10
@pytest.mark.parametrize("check", [availability.check, loading.check_data_available],
                         ids=["without TFDS", "asking TFDS"])
def test_a_limit_beyond_the_split_is_the_same_error_either_way(check):
    config = TrainConfig(dataset="cifar10", data_dir=TFDS_DIR, limit_train=40_001)
    with pytest.raises(UsageError) as error:
        check(config)
    assert str(error.value) == ("--limit-train 40001 is larger than the 80% training split of cifar10 "
                                "(40000 examples); use at most 40000")


@needs_cifar10
def test_cifar10_split_partitions_the_training_set(cifar10, read_from):
    arrays = loading.load_arrays(TrainConfig(dataset="cifar10", data_dir=TFDS_DIR))
    sizes = len(arrays.train_labels), len(arrays.validation_labels), len(arrays.test_labels)
    assert sizes == (40_000, 10_000, 10_000)
    assert arrays.evaluation_split == "validation"
    assert (arrays.num_classes, arrays.image_size) == (10, 32)
    together = _digests(
        np.concatenate([arrays.train_images, arrays.validation_images]),
        np.concatenate([arrays.train_labels, arrays.validation_labels]),
    )
    assert together == _digests(cifar10["train"]["image"], cifar10["train"]["label"])
    mean, std = loading.channel_stats(arrays.train_images)
    assert np.array_equal(arrays.mean, mean) and np.array_equal(arrays.std, std)


@needs_cifar10
def test_cifar10_full_train_evaluates_on_the_test_split(cifar10, read_from):
    config = TrainConfig(dataset="cifar10", data_dir=TFDS_DIR, full_train=True, limit_train=500)
    arrays = loading.load_arrays(config)
    assert arrays.evaluation_split == "test"
    assert np.array_equal(arrays.train_images, cifar10["train"]["image"][:500])
    assert np.array_equal(arrays.validation_labels, cifar10["test"]["label"])


@needs_cifar10
def test_limit_keeps_the_first_examples_of_the_training_split(cifar10, read_from):
    config = TrainConfig(dataset="cifar10", data_dir=TFDS_DIR, limit_train=300, split_seed=5)
    arrays = loading.load_arrays(config)
    train_index, _ = loading.split_indices(50_000, 0.2, seed=5)
    assert np.array_equal(arrays.train_labels, cifar10["train"]["label"][train_index[:300]])
    result = pipeline.make_data(arrays, batch_size=128, seed=0)
    assert (result.num_train_examples, result.steps_per_epoch) == (300, 3)


@needs_cifar10
@pytest.mark.parametrize("full_train, maximum", [(False, 40_000), (True, 50_000)])
def test_limit_above_the_split_names_the_maximum(full_train, maximum):
    config = TrainConfig(
        dataset="cifar10", data_dir=TFDS_DIR, full_train=full_train, limit_train=maximum + 1
    )
    message = f"--limit-train {maximum + 1} is larger .* use at most {maximum}$"
    with pytest.raises(UsageError, match=message):
        loading.check_data_available(config)


@needs_cifar10
def test_load_data_batches_normalized_float32_images(cifar10, read_from):
    config = TrainConfig(dataset="cifar10", data_dir=TFDS_DIR, limit_train=256, batch_size=64, eval_batch_size=100)
    result = loading.load_data(config)
    images, labels = next(iter(result.validation))
    assert images.shape == (100, 32, 32, 3)
    assert (images.dtype.name, labels.dtype.name) == ("float32", "int32")
    _, validation_index = loading.split_indices(50_000, 0.2, seed=0)
    raw = cifar10["train"]["image"][validation_index[:100]]
    expected = (raw / 255.0 - result.mean) / result.std
    np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-5)


@needs_cifar10
def test_evaluation_batches_are_larger_and_give_the_same_predictions():
    import keras

    config = TrainConfig(dataset="cifar10", data_dir=TFDS_DIR, limit_train=200, limit_validation=300)
    arrays = loading.load_arrays(config)
    small = pipeline.make_data(arrays, batch_size=64, seed=0)
    large = pipeline.make_data(arrays, batch_size=64, seed=0, eval_batch_size=256)
    assert [len(y) for _, y in large.validation.as_numpy_iterator()] == [256, 44]
    assert [len(y) for _, y in small.validation.as_numpy_iterator()] == [64] * 4 + [44]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.BatchNormalization(), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(10)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    got = model.evaluate(large.validation, verbose=0, return_dict=True)
    want = model.evaluate(small.validation, verbose=0, return_dict=True)
    assert got["accuracy"] == want["accuracy"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)


def test_prepare_command_leaves_prepared_data_alone(capsys):
    from app import prepare

    tfds_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "tfds")
    if not os.path.isdir(os.path.join(tfds_dir, "cifar10")):
        pytest.skip("needs the prepared cifar10 in ../shared/data/tfds")
    folder = prepare.main(["cifar10", "--data-dir", tfds_dir])
    assert folder == os.path.join(tfds_dir, "cifar10", "3.0.2")
    assert capsys.readouterr().out == f"cifar10: already prepared in {folder}\n"


def test_prepare_command_offline_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from app import prepare

    _no_network(monkeypatch)
    with pytest.raises(SystemExit) as exit:
        prepare.main(["cifar100", "--data-dir", str(tmp_path)])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: dataset 'cifar100' is not prepared in")
    assert not os.listdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        prepare.main(["cifar1000"])
    assert exit.value.code == 2 and "unknown dataset 'cifar1000'" in capsys.readouterr().err
