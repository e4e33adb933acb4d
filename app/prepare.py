"""`python -m app.prepare DATASET`: download and prepare a dataset with TFDS, nothing else.

For a machine without network: run this where there is network, then copy
`DATA_DIR/<tfds name>/` (e.g. `cifar100_n/`) into the offline machine's
`--data-dir`; the commands there read it without touching the network.
CIFAR-10N/100N also need the CIFAR-N annotation files (`--cifar-n-dir` with
the files as released; without it they are fetched from the CIFAR-N
repository), which are converted into TFDS's manual directory first; the
images come from the CIFAR host. Already prepared data is left as it is.

Example:

    python -m app.prepare cifar100n --data-dir ~/tfds --cifar-n-dir ../shared/data/cifar-n
    rsync -a ~/tfds/cifar100_n/ offline-host:/data/tfds/cifar100_n/
"""

import os

from app.errors import DefaultsHelpFormatter, OneLineArgumentParser, entry_point
from data import datasets


def build_parser():
    parser = OneLineArgumentParser(
        prog="python -m app.prepare",
        description="Download and prepare a dataset with TensorFlow Datasets (for later offline use).",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("dataset", help=f"one of: {', '.join(datasets.DATASETS)}")
    parser.add_argument("--data-dir", default=None, help="TFDS data directory (default: TFDS's own)")
    parser.add_argument("--cifar-n-dir", default=None,
                        help="CIFAR-N release files (cifar10n/cifar100n; default: fetched from the CIFAR-N repository)")
    return parser


@entry_point
def main(argv):
    """Prepares the dataset; returns the prepared folder (exit status 2 on bad input)."""
    args = build_parser().parse_args(argv)
    from app import cli
    from data import availability

    flags = ["--dataset", args.dataset, "--epochs", "1"]
    flags += ["--data-dir", args.data_dir] if args.data_dir else []
    flags += ["--cifar-n-dir", args.cifar_n_dir] if args.cifar_n_dir else []
    config = cli.parse_config(flags)
    spec = datasets.spec_of(config)
    root = availability.data_dir_root(config.data_dir)
    folder = os.path.join(root, spec.tfds_name, spec.version)
    if availability.prepared_split_sizes(root, spec) is not None:
        print(f"{config.dataset}: already prepared in {folder}", flush=True)
        return folder
    availability.require_obtainable(config, root, f"{spec.tfds_name}/{spec.version}")
    print(f"{config.dataset}: downloading and preparing {spec.tfds_name} {spec.version} in {root} ...", flush=True)
    from utils import quiet

    quiet.import_tensorflow()
    from data import loading

    loading.prepare(config)
    sizes = availability.prepared_split_sizes(root, spec) or {}
    print(f"{config.dataset}: prepared {folder} ("
          + ", ".join(f"{name} {count:,}" for name, count in sorted(sizes.items())) + ")", flush=True)
    return folder


if __name__ == "__main__":
    main()
