"""The README's "use the callbacks in your own `model.fit`" example runs as written.

Its outputs are checked against the logs it produced (the selected epochs are
the argmax/argmin of the logged EMA curves) and against the saved files.
TensorFlow by default; also run under `KERAS_BACKEND=jax` (tests/run.sh).
"""

import os
import re

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "## Use the callbacks in your own `model.fit`"


def readme_example():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    section = text[text.index(SECTION):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_and_its_outputs_agree_with_its_logs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    history, ema, bn, swa = (namespace[name].history if name == "history" else namespace[name]
                             for name in ("history", "ema", "bn", "swa"))
    for decay in ("0.9", "0.99"):
        accuracy = np.array(history[f"ema_{decay}_val_accuracy"])
        loss = np.array(history[f"ema_{decay}_val_loss"])
        entry = ema.summary()[decay]
        assert entry["best_val_accuracy"]["epoch"] == int(np.argmax(accuracy))  # 0-based, as Keras's epoch
        assert entry["lowest_val_loss"]["epoch"] == int(np.argmin(loss))
        assert entry["best_val_accuracy"]["val_accuracy"] == accuracy.max()
        # BatchNormRecompute: the selected EMA with statistics over all of x_train (the
        # BatchNorm follows the first Dense: exact in NumPy), evaluated by another model.
        for criterion, key in (("accuracy", "best_val_accuracy"), ("loss", "lowest_val_loss")):
            want = _evaluate_with_numpy_statistics(namespace, ema.selected_weights(float(decay), criterion))
            assert bn.summary()[decay][key]["val_loss"] == pytest.approx(want["loss"], rel=1e-4)
            assert bn.summary()[decay][key]["val_accuracy"] == pytest.approx(want["accuracy"], abs=1e-6)
    best = np.max([history[f"ema_{d}_val_accuracy"] for d in ("0.9", "0.99")], axis=0)
    np.testing.assert_array_equal(history["ema_best_val_accuracy"], best)
    # The weights at the start of epoch 7 (SWA paper Algorithm 1), then those after epochs 7 and 8.
    assert swa.summary()["models_averaged"] == 3 and swa.summary()["start_included"]
    # Logged after epochs 7 and 8; NaN before, so that a CSVLogger has the column from epoch 1.
    assert np.isnan(history["swa_val_loss"][:6]).all() and not np.isnan(history["swa_val_loss"][6:]).any()
    assert sorted(os.listdir("ema-weights")) == sorted(
        f"ema_{d}_{c}.weights.h5" for d in ("0.9", "0.99") for c in ("acc", "loss"))
    assert "best_val_accuracy" not in capsys.readouterr().err


def _evaluate_with_numpy_statistics(namespace, weights):
    import keras

    model, x_train = namespace["model"], namespace["x_train"].astype(np.float64)
    paths = [w.path.split("/")[-2:] for w in model.weights]
    index = {tuple(p): i for i, p in enumerate(paths)}
    dense, norm = model.layers[0].name, model.layers[1].name
    z = x_train @ weights[index[dense, "kernel"]] + weights[index[dense, "bias"]]
    weights = list(weights)
    weights[index[norm, "moving_mean"]] = z.mean(0).astype("float32")
    weights[index[norm, "moving_variance"]] = z.var(0).astype("float32")
    other = keras.models.clone_model(model)
    other.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    other.set_weights(weights)
    return other.evaluate(namespace["x_val"], namespace["y_val"], batch_size=128, verbose=0, return_dict=True)
