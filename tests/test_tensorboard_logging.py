"""Event files read back with TensorBoard's own reader."""

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from app.tensorboard_logging import ScalarWriter, layout_summary, tag_for


def test_tag_layout_puts_sgd_and_averages_on_one_prefix():
    assert tag_for("val_accuracy") == "val_accuracy/sgd"
    assert tag_for("ema_0.998_val_accuracy") == "val_accuracy/ema_0.998"
    assert tag_for("ema_0.998_bn_val_loss") == "val_loss/ema_0.998_bn"
    assert tag_for("ema_best_val_accuracy") == "val_accuracy/ema_best"
    assert tag_for("swa_val_accuracy") == "val_accuracy/swa"
    assert tag_for("accuracy") == "accuracy/train"
    assert tag_for("lr") == "learning_rate"
    assert tag_for("prediction_stability") == "prediction_stability/sgd"
    assert tag_for("ema_0.998_prediction_stability") == "prediction_stability/ema_0.998"
    assert tag_for("ema_0.998_weight_distance") == "weight_distance/ema_0.998"


def test_scalars_read_back_with_event_accumulator(tmp_path):
    writer = ScalarWriter(str(tmp_path))
    writer.scalars({"val_accuracy/sgd": 0.5, "val_accuracy/ema_0.998": 0.6}, step=1)
    writer.scalars({"val_accuracy/sgd": 0.55, "val_accuracy/ema_0.998": 0.65}, step=2)
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["val_accuracy/ema_0.998", "val_accuracy/sgd"]
    got = [(e.step, round(e.value, 6)) for e in events.Scalars("val_accuracy/ema_0.998")]
    assert got == [(1, 0.6), (2, 0.65)]


def test_custom_scalars_layout_reads_back_with_the_plugin_proto(tmp_path):
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    writer = ScalarWriter(str(tmp_path))
    writer.summary(layout_summary())
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tensor = events.Tensors(metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto
    layout = layout_pb2.Layout.FromString(tensor.string_val[0])
    titles = [category.title for category in layout.category]
    assert titles == ["EMA vs SGD", "EMA decays", "learning rate", "stability", "training"]
    fig_1a = layout.category[0].chart[0].multiline.tag
    import re

    assert [t for t in ["val_accuracy/sgd", "val_accuracy/ema_best", "val_accuracy/ema_0.998"]
            if any(re.match(p, t) for p in fig_1a)] == ["val_accuracy/sgd", "val_accuracy/ema_best"]
    fig_1b = layout.category[1].chart[0].multiline.tag
    assert all(any(re.match(p, t) for p in fig_1b)
               for t in ["val_accuracy/ema_0.968", "val_accuracy/ema_0.998_bn"])
