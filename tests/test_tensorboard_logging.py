"""Event files read back with TensorBoard's own reader: one TensorBoard run per model."""

import re

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from training.tensorboard_logging import RunWriters, ScalarWriter, layout_summary, run_and_tag


def test_every_model_is_a_run_with_the_same_tags():
    assert run_and_tag("val_accuracy") == ("sgd", "val_accuracy")
    assert run_and_tag("ema_0.998_val_accuracy") == ("ema_0.998", "val_accuracy")
    assert run_and_tag("ema_0.998_bn_val_loss") == ("ema_0.998_bn", "val_loss")
    assert run_and_tag("ema_best_val_accuracy") == ("ema_best", "val_accuracy")
    assert run_and_tag("swa_val_accuracy") == ("swa", "val_accuracy")
    assert run_and_tag("accuracy") == ("sgd", "train_accuracy")
    assert run_and_tag("train_loss") == ("sgd", "train_loss")
    assert run_and_tag("lr") == ("sgd", "learning_rate")
    assert run_and_tag("epoch_seconds") == ("sgd", "time/epoch_seconds")
    assert run_and_tag("prediction_stability") == ("sgd", "prediction_stability")
    assert run_and_tag("ema_0.998_prediction_stability") == ("ema_0.998", "prediction_stability")
    assert run_and_tag("ema_0.998_weight_distance") == ("ema_0.998", "weight_distance")


def test_runs_read_back_with_the_event_multiplexer(tmp_path):
    writers = RunWriters(str(tmp_path))
    writers.log({"val_accuracy": 0.5, "ema_0.998_val_accuracy": 0.6, "lr": 0.1}, step=1)
    writers.log({"val_accuracy": 0.55, "ema_0.998_val_accuracy": 0.65, "lr": 0.05}, step=2)
    writers.close()
    runs = EventMultiplexer().AddRunsFromDirectory(str(tmp_path))
    runs.Reload()
    assert sorted(runs.Runs()) == ["ema_0.998", "sgd"]
    assert sorted(runs.Runs()["sgd"]["scalars"]) == ["learning_rate", "val_accuracy"]
    got = [(e.step, round(e.value, 6)) for e in runs.Scalars("ema_0.998", "val_accuracy")]
    assert got == [(1, 0.6), (2, 0.65)]


def test_custom_scalars_layout_holds_only_what_is_tracked(tmp_path):
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    def layout(stability):
        path = tmp_path / str(stability)
        writer = ScalarWriter(str(path))
        writer.summary(layout_summary(stability))
        writer.close()
        events = EventAccumulator(str(path))
        events.Reload()
        tensor = events.Tensors(metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto
        return layout_pb2.Layout.FromString(tensor.string_val[0])

    titles = [category.title for category in layout(False).category]
    assert titles == ["EMA vs SGD", "learning rate", "training", "time"]
    assert [c.title for c in layout(True).category][-1] == "stability"
    accuracy = layout(False).category[0].chart[0].multiline.tag
    assert [t for t in ("val_accuracy", "val_loss", "train_accuracy") if any(re.match(p, t) for p in accuracy)] == [
        "val_accuracy"]
