"""Event files read back with TensorBoard's own reader."""

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from app.tensorboard_logging import ScalarWriter, tag_for


def test_tag_layout_puts_sgd_and_averages_on_one_prefix():
    assert tag_for("val_accuracy") == "val_accuracy/sgd"
    assert tag_for("ema_0.998_val_accuracy") == "val_accuracy/ema_0.998"
    assert tag_for("ema_0.998_bn_val_loss") == "val_loss/ema_0.998_bn"
    assert tag_for("ema_best_val_accuracy") == "val_accuracy/ema_best"
    assert tag_for("swa_val_accuracy") == "val_accuracy/swa"
    assert tag_for("accuracy") == "accuracy/train"
    assert tag_for("lr") == "learning_rate"


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
