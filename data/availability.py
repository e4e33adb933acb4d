"""Is a dataset there, or can it be fetched? Answered without TensorFlow or TFDS.

The command lines call `check(config)` before their heavy imports, so that
"not prepared and offline" or "--limit-train larger than the split" is one
line within a second instead of after importing TensorFlow (~8 s here).

TFDS keeps a prepared dataset in `<data_dir>/<tfds name>/<version>/`, with a
`dataset_info.json` whose `splits[].shardLengths` give the split sizes;
`data_dir` defaults to `$TFDS_DATA_DIR`, else `~/tensorflow_datasets` (TFDS's
own rule). What this module cannot decide -- a remote data_dir (`gs://...`),
only another version prepared, sources on disk to prepare from -- it leaves to
the full check after the imports (data/loading.py), which asks TFDS itself.

Offline machines: preparing a dataset that is not there needs its download
host; `unreachable_reason` opens one TCP connection with a timeout (name resolution
included) instead of letting TFDS retry for minutes.
"""

import json
import os
import socket
import threading
import urllib.parse
import urllib.request

from data import cifar_n
from data import datasets
from utils.errors import UsageError

NETWORK_PROBE_SECONDS = 5.0
INFO_FILE = "dataset_info.json"


def check(config):
    """Fails in one line when `config`'s data is surely unusable; cheap, no TensorFlow.

    Returns:
        {split name: number of examples} when the expected version is
        prepared, else None (then the data is either obtainable or a case
        for the full check).

    Raises:
        UsageError: unknown dataset or bad data flags, `limit_train` larger
            than the split, or data neither prepared nor downloadable.
    """
    spec = datasets.spec_of(config)
    root = data_dir_root(config.data_dir)
    if "://" in root:  # a remote file system: only TFDS can look
        return None
    sizes = prepared_split_sizes(root, spec)
    if sizes is not None:
        if "train" in sizes:
            datasets.check_limit(config, datasets.num_train_examples(sizes["train"], config.full_train, config.validation_fraction))
        return sizes
    if _any_version_prepared(root, spec):
        return None  # maybe one TFDS still reads: the full check decides
    require_obtainable(config, root, f"{spec.tfds_name}/{spec.version}")
    return None


def require_obtainable(config, root, holding):
    """For data not prepared in `root`: raises UsageError unless it can be prepared.

    It can when the CIFAR-N release files named by `cifar_n_dir` are complete
    (and the image host answers), a Tiny-ImageNet archive is in the manual
    directory, or the download hosts answer. `holding` names the prepared
    folder the fix asks for (`cifar10/3.0.2`).
    """
    manual = datasets.manual_dir(root)
    if config.dataset in cifar_n.RELEASES and config.cifar_n_dir is not None:
        cifar_n.check_sources(config.dataset, config.cifar_n_dir)
    if config.dataset == "tiny-imagenet" and datasets.find_tiny_imagenet_archive(manual):
        return
    failures = [f"{urllib.parse.urlsplit(url).hostname}, which {reason}"
                for url in download_urls(config, manual) if (reason := unreachable_reason(url))]
    if failures:
        raise not_prepared(config, root, holding, f"preparing it needs {'; '.join(failures)} (offline?)")


def data_dir_root(data_dir):
    """Where TFDS reads and writes datasets: `data_dir`, else its default."""
    if data_dir is not None:
        return os.fspath(data_dir)
    return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def prepared_split_sizes(root, spec):
    """{split: examples} from `<root>/<name>/<version>/dataset_info.json`, or None if absent."""
    path = os.path.join(root, spec.tfds_name, spec.version, INFO_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            info = json.load(handle)
        return {split["name"]: sum(int(n) for n in split.get("shardLengths", ()))
                for split in info.get("splits", ())}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def download_urls(config, manual_directory):
    """The hosts preparing `config.dataset` would fetch from."""
    urls = [datasets.spec_of(config).download_url]
    release = cifar_n.RELEASES.get(config.dataset)
    if release is not None and config.cifar_n_dir is None:
        if not cifar_n.manual_dir_is_ready(config.dataset, manual_directory):
            urls.append(release.url(release.human_pt))
    return urls


def not_prepared(config, root, holding, what_failed):
    """The one-line error for data that is not prepared and cannot be: what is missing, what was
    found, and how to prepare it elsewhere (`python -m app.prepare`) and bring it here."""
    spec = datasets.spec_of(config)
    missing = f"dataset {config.dataset!r} is not prepared in {root} (no {holding}/{INFO_FILE})"
    elsewhere = (f"on a machine with network run `python -m app.prepare {config.dataset} --data-dir DIR"
                 f"{_cifar_n_flag(config)}` and copy DIR/{spec.tfds_name}/ into {root}")
    if config.dataset == "tiny-imagenet":
        fix = (f"put {datasets.TINY_IMAGENET_ARCHIVE} ({datasets.TINY_IMAGENET_URL}) in "
               f"{datasets.manual_dir(root)} and rerun, or {elsewhere}")
    else:
        fix = elsewhere
    found = _cifar_n_found(config, root)
    return UsageError(f"{missing} and {what_failed}{found}; {fix}, or pass --data-dir DIR holding {holding}")


def _cifar_n_flag(config):
    if config.dataset in cifar_n.RELEASES:
        return f" --cifar-n-dir {config.cifar_n_dir or 'FILES'}"
    return ""


def _cifar_n_found(config, root):
    """For CIFAR-N: that the annotations are there and the images are what is missing."""
    if config.dataset not in cifar_n.RELEASES:
        return ""
    images = "CIFAR-10" if config.dataset == "cifar10n" else "CIFAR-100"
    if config.cifar_n_dir is not None:
        where = f"--cifar-n-dir {config.cifar_n_dir}"
    elif cifar_n.manual_dir_is_ready(config.dataset, datasets.manual_dir(root)):
        where = datasets.manual_dir(root)
    else:
        return (f" (it needs the {images} images and the CIFAR-N annotation files, e.g. "
                f"{cifar_n.RELEASES[config.dataset].human_pt}: pass them with --cifar-n-dir)")
    return f" (the CIFAR-N annotations in {where} are complete; the {images} images are what is missing)"


def unreachable_reason(url, timeout=NETWORK_PROBE_SECONDS):
    """None when a TCP connection to `url`'s host (or its proxy) opens within `timeout` s, else why not.

    A refusal or a failed name lookup comes back at once and says so; only a
    silent host takes the whole timeout ("did not answer within 5 s").
    """
    scheme = urllib.parse.urlsplit(url).scheme
    parts = urllib.parse.urlsplit(urllib.request.getproxies().get(scheme, url))
    port = parts.port or (443 if parts.scheme == "https" else 80)
    outcome = []

    def probe():
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as error:
            outcome.append(f"could not be reached ({getattr(error, 'strerror', None) or error})")

    # A thread, because name resolution ignores socket timeouts.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"did not answer within {timeout:g} s"


def _any_version_prepared(root, spec):
    folder = os.path.join(root, spec.tfds_name)
    try:
        return any(os.path.isfile(os.path.join(folder, version, INFO_FILE)) for version in os.listdir(folder))
    except OSError:
        return False
