"""CIFAR-N annotation files -> the manual directory of TFDS's CIFAR-N builders.

TFDS's `cifar10_n` and `cifar100_n` builders read three files from their
manual directory (`<data_dir>/downloads/manual/` by default) and ask users to
make one of them by hand:

    side_info_cifar10N.csv            as released
    image_order_c10.npy               as released
    CIFAR-10_human_annotations.csv    `pandas.DataFrame(d).to_csv(index=False)`
                                      of the dict `d` in CIFAR-10_human_ordered.npy

(and the same with `cifar100N`, `c100`, `CIFAR-100`). `prepare_manual_dir`
does this: it writes the CSV with the same header and integer rows as that
pandas call, reading either the `_ordered.npy` or, when only the `.pt` file of
the release is at hand, `<.pt arrays>[image_order]` (the `_ordered.npy` is
exactly that; tests check it on CIFAR-100). The builders read the CSV columns
by position (CIFAR-10N: 1 aggre, 2 worse, 3-5 random1-3; CIFAR-100N: 1 noise),
so the columns are always written in the release's order.

The release files come from `cifar_n_dir` when given, else from the CIFAR-N
GitHub repository. `.pt` files are a zip holding a pickle of NumPy arrays, read
without PyTorch; pickles are unpickled with only NumPy's array constructors
allowed. Existing files in the manual directory are never overwritten with
different content.
"""

import dataclasses
import io
import os
import pickle
import urllib.request
import zipfile

import numpy as np

from utils.errors import UsageError
from utils.files import atomic_write

REPOSITORY = "https://github.com/UCSC-REAL/cifar-10-100n"
# github.com/<repo>/raw/ also serves files kept in Git LFS, raw.githubusercontent.com not.
_RAW = f"{REPOSITORY}/raw/main"
NUM_TRAIN_EXAMPLES = 50_000
DOWNLOAD_TIMEOUT_SECONDS = 30


@dataclasses.dataclass(frozen=True)
class Release:
    """The CIFAR-N files of one dataset: release names and the TFDS CSV."""

    side_info: str
    image_order: str
    human_pt: str
    human_ordered: str
    annotations_csv: str
    # (CSV column, key in the .pt file), in the `_ordered.npy` dict's order.
    columns: tuple
    # Annotators label images in batches: rows of side_info (paper of CIFAR-N).
    images_per_side_info_row: int

    def url(self, name):
        folder = "/data" if name in (self.human_pt, self.human_ordered) else ""
        return f"{_RAW}{folder}/{name}"

    @property
    def manual_files(self):
        return (self.side_info, self.image_order, self.annotations_csv)


RELEASES = {
    "cifar10n": Release(
        side_info="side_info_cifar10N.csv",
        image_order="image_order_c10.npy",
        human_pt="CIFAR-10_human.pt",
        human_ordered="CIFAR-10_human_ordered.npy",
        annotations_csv="CIFAR-10_human_annotations.csv",
        columns=(
            ("clean_label", "clean_label"),
            ("aggre_label", "aggre_label"),
            ("worse_label", "worse_label"),
            ("random_label1", "random_label1"),
            ("random_label2", "random_label2"),
            ("random_label3", "random_label3"),
        ),
        images_per_side_info_row=10,
    ),
    "cifar100n": Release(
        side_info="side_info_cifar100N.csv",
        image_order="image_order_c100.npy",
        human_pt="CIFAR-100_human.pt",
        human_ordered="CIFAR-100_human_ordered.npy",
        annotations_csv="CIFAR-100_human_annotations.csv",
        columns=(("clean_label", "clean_label"), ("noise_label", "noisy_label")),
        images_per_side_info_row=5,
    ),
}


def manual_dir_is_ready(dataset, manual_dir):
    """Whether `manual_dir` already holds the three files the TFDS builder reads."""
    names = RELEASES[dataset].manual_files
    return all(os.path.isfile(os.path.join(manual_dir, name)) for name in names)


def check_sources(dataset, cifar_n_dir):
    """Raises `UsageError` naming the first release file missing from `cifar_n_dir`."""
    release = RELEASES[dataset]
    if not os.path.isdir(cifar_n_dir):
        raise UsageError(f"--cifar-n-dir {cifar_n_dir} is not a directory")
    present = set(os.listdir(cifar_n_dir))
    for name in (release.side_info, release.image_order):
        if name not in present:
            raise _missing(release, name, cifar_n_dir)
    if release.human_pt not in present and release.human_ordered not in present:
        raise _missing(release, release.human_pt, cifar_n_dir)


def prepare_manual_dir(dataset, manual_dir, cifar_n_dir=None):
    """Writes the files TFDS's `cifar10_n`/`cifar100_n` builder reads; returns their paths.

    Args:
        dataset: "cifar10n" or "cifar100n".
        manual_dir: the TFDS manual directory; created if needed.
        cifar_n_dir: folder with the release files; None downloads them
            (only those needed) from the CIFAR-N repository. Defaults to None.

    Raises:
        UsageError: a release file is missing, incomplete or cannot be
            downloaded, or a different file already exists in `manual_dir`.
    """
    release = RELEASES[dataset]
    if cifar_n_dir is None and manual_dir_is_ready(dataset, manual_dir):
        return [os.path.join(manual_dir, name) for name in release.manual_files]
    if cifar_n_dir is not None:
        check_sources(dataset, cifar_n_dir)
    source = _Source(release, cifar_n_dir)
    order = _read_image_order(source, release.image_order)
    side_info = source.read(release.side_info)
    _check_side_info(release, side_info)
    files = {
        release.side_info: side_info,
        release.image_order: source.read(release.image_order),
        release.annotations_csv: annotations_csv(_ordered_annotations(source, order)),
    }
    os.makedirs(manual_dir, exist_ok=True)
    return [
        _write_new(os.path.join(manual_dir, name), data, source.where(name))
        for name, data in files.items()
    ]


def annotations_csv(columns):
    """The bytes `pandas.DataFrame(columns).to_csv(index=False)` writes for integer columns."""
    names = list(columns)
    rows = np.stack([np.asarray(columns[name], dtype=np.int64) for name in names], axis=1)
    lines = [",".join(names)] + [",".join(map(str, row)) for row in rows.tolist()]
    return ("\n".join(lines) + "\n").encode()


def load_pt(path_or_bytes):
    """The dict of arrays in a CIFAR-N `.pt` file (a zip holding a pickle), without PyTorch."""
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else _read_bytes(path_or_bytes)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        (name,) = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        return _NumpyUnpickler(io.BytesIO(archive.read(name))).load()


def load_pickled_npy(path_or_bytes):
    """The object stored in an object-dtype `.npy` file (what `np.load(...)[()]` gives)."""
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else _read_bytes(path_or_bytes)
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        shape, _fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
    if dtype != np.dtype(object) or shape != ():
        raise ValueError(f"expected a pickled object, got dtype {dtype} shape {shape}")
    array = _NumpyUnpickler(stream).load()  # np.save pickles the 0-d object array itself
    return array[()]


# What a truncated or foreign file raises while being read.
_UNREADABLE = (
    ValueError, KeyError, TypeError, IndexError, EOFError, OSError,
    zipfile.BadZipFile, pickle.UnpicklingError,
)


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays and plain containers only: release files are untrusted input."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module == "numpy.core.multiarray":  # NumPy 2 renamed numpy.core to numpy._core
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


class _Source:
    """Release files from `cifar_n_dir`, or downloaded once each."""

    def __init__(self, release, cifar_n_dir):
        self.release = release
        self.cifar_n_dir = cifar_n_dir
        self._downloaded = {}

    def has(self, name):
        if self.cifar_n_dir is None:
            return name != self.release.human_ordered  # the .pt is downloaded instead
        return os.path.isfile(os.path.join(self.cifar_n_dir, name))

    def where(self, name):
        if self.cifar_n_dir is None:
            return self.release.url(name)
        return os.path.join(self.cifar_n_dir, name)

    def read(self, name):
        if self.cifar_n_dir is not None:
            return _read_bytes(os.path.join(self.cifar_n_dir, name))
        if name not in self._downloaded:
            self._downloaded[name] = _download(self.release.url(name), name)
        return self._downloaded[name]


def _ordered_annotations(source, order):
    release = source.release
    if source.has(release.human_ordered):
        name = release.human_ordered
        try:
            stored = load_pickled_npy(source.read(name))
            columns = {column: np.asarray(stored[column]) for column, _key in release.columns}
        except _UNREADABLE as error:
            raise _corrupt(release, name, source.where(name), error) from None
    else:
        name = release.human_pt
        try:
            stored = load_pt(source.read(name))
            columns = {column: np.asarray(stored[key])[order] for column, key in release.columns}
        except _UNREADABLE as error:
            raise _corrupt(release, name, source.where(name), error) from None
    for column, values in columns.items():
        if values.shape != (NUM_TRAIN_EXAMPLES,):
            raise _corrupt(release, name, source.where(name), f"{column} has shape {values.shape}")
    return columns


def _read_image_order(source, name):
    try:
        order = np.load(io.BytesIO(source.read(name)), allow_pickle=False)
    except _UNREADABLE as error:
        raise _corrupt(source.release, name, source.where(name), error) from None
    if not np.array_equal(np.sort(order), np.arange(NUM_TRAIN_EXAMPLES)):
        reason = "not a permutation of the 50,000 train indices"
        raise _corrupt(source.release, name, source.where(name), reason)
    return order


def _check_side_info(release, data):
    rows = data.decode(errors="replace").strip().count("\n")  # the header line is not a row
    expected = NUM_TRAIN_EXAMPLES // release.images_per_side_info_row
    if rows != expected:
        where = release.url(release.side_info)
        raise UsageError(
            f"CIFAR-N file {release.side_info} has {rows} rows, expected {expected}: "
            f"incomplete; download it again from {where}"
        )


def _write_new(path, data, source):
    if os.path.isfile(path):
        if _read_bytes(path) == data:
            return path
        raise UsageError(
            f"{path} exists and differs from the one prepared from {source}; "
            "move it away (it was not overwritten) or pass another --data-dir"
        )
    return atomic_write(path, data)


def _download(url, name):
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
            return response.read()
    except OSError as error:
        raise UsageError(
            f"could not download CIFAR-N file {name} from {url} ({error}); "
            f"download the CIFAR-N files from {REPOSITORY} and pass --cifar-n-dir DIR"
        ) from None


def _missing(release, name, folder):
    return UsageError(
        f"CIFAR-N file {name} is missing from {folder}; download it from {release.url(name)}"
    )


def _corrupt(release, name, where, reason):
    reason = (str(reason).strip().splitlines() or ["unreadable"])[0]
    return UsageError(
        f"CIFAR-N file {name} ({where}) is incomplete or corrupt ({reason}); "
        f"download it again from {release.url(name)}"
    )


def _read_bytes(path):
    with open(path, "rb") as file:
        return file.read()
