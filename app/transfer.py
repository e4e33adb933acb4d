"""`python -m app.transfer RUN_DIR --dataset cifar10`: linear evaluation of the frozen backbone (paper §4.5).

As the paper (after Chen et al. 2020): the pretrained model without its last
layer is a frozen feature extractor; a new linear head for the target
dataset's classes is trained for 50 epochs with SGD, Nesterov momentum 0.9,
learning rate 0.01, no weight decay, no warm-up, no EMA; its accuracy on the
target's test split is reported. Done for the SGD model at the end of
training (`baseline`) and the EMA early-stopped at best validation accuracy
(`ema_acc`) and at lowest validation loss (`ema_loss`), of one decay
(`--ema-decay`, default the largest), BatchNorm recomputed once after
training. Writes RUN_DIR/transfer.json (shape: evaluation/report.py; a second
target dataset is added beside the first); a RUN_DIR of `seed-<k>/` runs is
done seed by seed.

Decisions the paper leaves open:
- No augmentation. The paper does not say; with none the frozen features of
  every image are the same each epoch, so they are computed once (the
  backbone in inference mode: BatchNorm uses its statistics, dropout is off)
  and the head trains on them: 50 epochs cost one forward pass of the
  backbone instead of 50.
- The target images are normalized with the pretraining run's channel mean
  and std: the frozen backbone is a function of its own input normalization.
- The head is trained on the target's whole training set (no hold-out:
  nothing is tuned here; lr 0.01 is the paper's tuned value), batch size
  128, PyTorch's default `nn.Linear` initialization, each epoch in a seeded
  random order. Keras SGD with `nesterov=True` equals PyTorch's under this
  constant rate (docs/fidelity.md).
- The backbone is built at the target's image size: every model here ends in
  global average pooling, so its weights do not depend on the input size.

Evidence: tests/test_transfer.py re-derives the head's training in NumPy and
checks the features against the pretrained classifier's logits.

Example:

    python -m app.transfer runs/tiny-imagenet-resnet18 --dataset cifar100
"""

import json
import os

import numpy as np

from app.errors import (DefaultsHelpFormatter, OneLineArgumentParser, UsageError, add_run_reading_arguments,
                        entry_point, positive_int)

TRANSFER_FILE = "transfer.json"
TARGETS = ("cifar10", "cifar100", "tiny-imagenet")  # clean labels only
METHODS = ("baseline", "ema_acc", "ema_loss")  # paper Table 4
# Settings that must agree with a transfer.json already in the run directory.
SETTINGS = ("epochs", "lr", "momentum", "batch_size", "seed", "augmentation")


def build_parser():
    parser = OneLineArgumentParser(
        prog="python -m app.transfer",
        description="Linear evaluation of a run's frozen backbone on another dataset (Table 4).",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="a run directory, or a directory of seed-<k>/ run directories")
    parser.add_argument("--dataset", required=True, help=f"target dataset, one of: {', '.join(TARGETS)}")
    parser.add_argument("--epochs", type=positive_int, default=50, help="epochs of head training (paper: 50)")
    parser.add_argument("--lr", type=float, default=0.01, help="constant learning rate of the head (paper: 0.01)")
    parser.add_argument("--momentum", type=float, default=0.9, help="Nesterov momentum (paper: 0.9)")
    parser.add_argument("--batch-size", type=positive_int, default=128, help="head training batch size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the head's initialization and batch order")
    parser.add_argument("--ema-decay", type=float, default=None,
                        help="EMA decay transferred (default: the largest the run kept)")
    parser.add_argument("--limit-train", type=positive_int, default=None,
                        help="train the head on the first N target training examples (smoke runs)")
    # Its --batch-size is the head's training batch (above); the test split is the target dataset's.
    add_run_reading_arguments(parser, flags=("--limit-test", "--data-dir"))
    return parser


@entry_point
def main(argv):
    """Runs the command line; returns {run path: transfer dict} (exit status 2 on bad input)."""
    args, plans = prepare(argv)
    from data import loading

    targets = {}  # every seed of a directory uses the same target data: load it once
    results = {}
    for plan in plans:
        if plan["target"] not in targets:
            targets = {plan["target"]: loading.load_arrays(plan["target"])}
        results[plan["run"].path] = transfer(args, plan, targets[plan["target"]])
    return results


def settings_of(args):
    return {"epochs": args.epochs, "lr": args.lr, "momentum": args.momentum, "nesterov": True,
            "weight_decay": 0.0, "batch_size": args.batch_size, "seed": args.seed, "augmentation": False,
            "features": "penultimate layer, frozen, inference mode, computed once",
            "input_normalization": "channel mean/std of the pretraining run"}


def prepare(argv):
    """Everything that can fail because of the user, for every seed, before any prediction."""
    args = build_parser().parse_args(argv)
    if args.dataset not in TARGETS:
        raise UsageError(f"unknown target dataset {args.dataset!r}; choose from {', '.join(TARGETS)}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be > 0; got {args.lr:g}")
    if not 0 <= args.momentum < 1:
        raise UsageError(f"--momentum must be in [0, 1); got {args.momentum:g}")
    if args.ema_decay is not None and not 0 < args.ema_decay < 1:
        raise UsageError(f"--ema-decay must be in (0, 1); got {args.ema_decay:g}")
    from utils import quiet
    from evaluation import predictions

    plans = []
    for run in predictions.expand_runs(args.run_dir):
        decay_key = predictions.choose_decay(run, args.ema_decay)
        methods = predictions.method_weights(run, decay_key)
        config = predictions.run_config(run, args.data_dir)
        predictions.check_data(config)
        target = target_config(config, args)
        predictions.check_data(target, args.limit_test)  # --limit-train checked too
        quiet.import_tensorflow()  # the data is fine: now the heavy imports
        existing = _read_existing(run.path)
        ours = settings_of(args)
        ours["ema_decay"] = decay_key
        differing = [key for key in SETTINGS + ("ema_decay",) if key in existing and existing[key] != ours[key]]
        if differing:
            raise UsageError(
                f"{os.path.join(run.path, TRANSFER_FILE)} holds results with other settings "
                f"({', '.join(f'{key}={existing[key]}' for key in differing)}); use those or move the file away"
            )
        plans.append({"run": run, "config": config, "target": target, "existing": existing,
                      "methods": {m: methods[m] for m in METHODS if m in methods}, "decay_key": decay_key})
    return args, plans


def target_config(config, args):
    """The target dataset's `TrainConfig`: its whole training set (`full_train`), test split as is."""
    from training.config import TrainConfig

    return TrainConfig(dataset=args.dataset, model=config.model, data_dir=config.data_dir,
                       full_train=True, limit_train=args.limit_train, batch_size=args.batch_size)


def _read_existing(run_path):
    path = os.path.join(run_path, TRANSFER_FILE)
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            existing = json.load(handle)
    except (OSError, ValueError):
        raise UsageError(f"{path} is not readable JSON; move it away")
    if not isinstance(existing, dict):
        raise UsageError(f"{path} is not a transfer.json; move it away")
    return existing


def transfer(args, plan, target):
    """Linear evaluation of every method of one run; merges into transfer.json; prints the table.

    `target` is `data.loading.load_arrays(plan["target"])`.
    """
    from data import pipeline
    from evaluation import metrics, predictions

    run = plan["run"]
    source = predictions.load_arrays(plan["config"])  # the backbone's normalization and classes
    predictions.check_limit("--limit-test", args.limit_test, len(target.test_labels))

    def split(images, labels):
        return predictions.Split(
            pipeline.evaluation_dataset(images, labels, source.mean, source.std, args.batch_size), labels)

    train = split(target.train_images, target.train_labels)
    test = split(target.test_images[: args.limit_test], target.test_labels[: args.limit_test])
    model = predictions.build_model(plan["config"], source.num_classes, target.image_size)
    extractor = feature_extractor(model)
    results = {}
    for method, name in plan["methods"].items():
        predictions.load_weights(model, run, name)
        train_features = predict_features(extractor, train)
        test_features = predict_features(extractor, test)
        head = build_linear_head(train_features.shape[1], target.num_classes, seed=args.seed)
        losses = train_linear_head(head, train_features, train.labels, epochs=args.epochs, lr=args.lr,
                                   momentum=args.momentum, batch_size=args.batch_size, seed=args.seed)
        logits = head.predict(test_features, batch_size=args.batch_size, verbose=0)
        results[method] = {"weights": predictions.relative_weights_path(name),
                           "accuracy": metrics.accuracy(logits, test.labels),
                           "loss": metrics.negative_log_likelihood(logits, test.labels),
                           "train_loss": losses}
    result = dict(plan["existing"])
    result.update(settings_of(args))
    result["ema_decay"] = plan["decay_key"]
    result.setdefault("linear_eval", {})[args.dataset] = results
    result.setdefault("targets", {})[args.dataset] = {"train_examples": len(train.labels),
                                                      "test_examples": len(test.labels)}
    from utils.files import atomic_write_text

    path = os.path.join(run.path, TRANSFER_FILE)
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    print(format_table(run.path, args.dataset, result, path), flush=True)
    return result


def feature_extractor(model):
    """The model up to the input of its last layer (a Dense classifier), sharing its layers."""
    import keras

    classifier = model.layers[-1]
    if not isinstance(classifier, keras.layers.Dense):
        raise ValueError(f"The last layer of {model.name} is a {type(classifier).__name__}, not a Dense classifier.")
    return keras.Model(model.inputs, classifier.input, name=f"{model.name}_features")


def predict_features(extractor, split):
    """float32 (N, features), inference mode."""
    return np.asarray(extractor.predict(split.dataset, verbose=0), dtype=np.float32)


def build_linear_head(num_features, num_classes, seed):
    """A float32 linear layer, PyTorch's `nn.Linear` default initialization (models/layers.py)."""
    import keras

    from evaluation.predictions import float32_policy
    from models.layers import dense_initializer

    keras.utils.set_random_seed(seed)
    with float32_policy():
        head = keras.Sequential([
            keras.Input(shape=(num_features,), dtype="float32"),
            keras.layers.Dense(num_classes, kernel_initializer=dense_initializer(),
                               bias_initializer=dense_initializer_bias(num_features), name="linear_head"),
        ])
    return head


def dense_initializer_bias(num_features):
    """PyTorch's `nn.Linear` bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    import keras

    bound = 1.0 / np.sqrt(num_features)
    return keras.initializers.RandomUniform(-bound, bound)


def epoch_orders(num_examples, epochs, seed):
    """The example order of each epoch: seeded permutations, one per epoch."""
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        yield rng.permutation(num_examples)


def train_linear_head(head, features, labels, epochs, lr, momentum=0.9, batch_size=128, seed=0):
    """SGD with Nesterov momentum, constant `lr`, no weight decay; returns each epoch's mean training loss."""
    import keras

    head.compile(
        optimizer=keras.optimizers.SGD(learning_rate=lr, momentum=momentum, nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    losses = []
    # The order is ours (not fit's shuffle), so the training can be re-derived exactly.
    for epoch, order in enumerate(epoch_orders(len(labels), epochs, seed)):
        history = head.fit(features[order], labels[order], batch_size=batch_size, epochs=epoch + 1,
                           initial_epoch=epoch, shuffle=False, verbose=0)
        losses.append(float(history.history["loss"][-1]))
    return losses


def format_table(run_path, dataset, result, path):
    entries = result["linear_eval"][dataset]
    counts = result["targets"][dataset]
    lines = [f"\n{run_path}: linear evaluation on {dataset} ({counts['train_examples']} train / "
             f"{counts['test_examples']} test), {result['epochs']} epochs, lr {result['lr']:g}"]
    lines.append(f"{'model':<12}{'weights':<40}{'accuracy (%)':>13}{'test NLL':>10}{'train loss':>12}")
    for method, entry in entries.items():
        lines.append(f"{method:<12}{entry['weights']:<40}{entry['accuracy'] * 100:>13.2f}"
                     f"{entry['loss']:>10.4f}{entry['train_loss'][-1]:>12.4f}")
    lines.append(f"-> {path}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
