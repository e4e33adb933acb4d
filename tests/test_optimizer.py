"""TorchSGD against a NumPy re-derivation of torch.optim.SGD(nesterov=True)."""

import numpy as np
import keras
import pytest

from training.optimizer import TorchSGD
from training.schedules import TrainingSchedule


def torch_sgd_reference(weights, gradients_fn, lrs, momentum, l2, nesterov):
    """torch.optim.SGD: g += wd*w; buf = m*buf + g; w -= lr*(g + m*buf | buf)."""
    w = [np.array(x, dtype=np.float64) for x in weights]
    buffers = [np.zeros_like(x) for x in w]
    for lr in lrs:
        grads = gradients_fn(w)
        for i, g in enumerate(grads):
            g = g + l2 * w[i]
            buffers[i] = momentum * buffers[i] + g
            step = g + momentum * buffers[i] if nesterov else buffers[i]
            w[i] = w[i] - lr * step
    return w


@pytest.mark.parametrize("nesterov", [True, False])
def test_matches_torch_sgd_under_a_changing_learning_rate(nesterov):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = rng.normal(size=(16, 2)).astype("float32")
    kernel = rng.normal(size=(3, 2)).astype("float32")
    bias = rng.normal(size=(2,)).astype("float32")
    schedule = TrainingSchedule("cosine", 0.2, steps_per_epoch=2, epochs=4, warmup_epochs=1)
    steps = 8

    variables = [keras.Variable(kernel), keras.Variable(bias)]
    optimizer = TorchSGD(learning_rate=schedule, momentum=0.9, nesterov=nesterov, l2=0.01)

    def mse_gradients(w):
        # d/dW mean((xW + b - y)^2) in closed form.
        residual = x @ w[0] + w[1] - y
        scale = 2.0 / residual.size
        return [scale * x.T @ residual, scale * residual.sum(axis=0)]

    for _ in range(steps):
        current = [keras.ops.convert_to_numpy(v).astype(np.float64) for v in variables]
        grads = [g.astype("float32") for g in mse_gradients(current)]
        optimizer.apply(grads, variables)

    lrs = [float(keras.ops.convert_to_numpy(schedule(step))) for step in range(steps)]
    expected = torch_sgd_reference([kernel, bias], mse_gradients, lrs, 0.9, 0.01, nesterov)
    for variable, reference in zip(variables, expected):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), reference, rtol=1e-5, atol=1e-6)


def test_refuses_decoupled_weight_decay():
    with pytest.raises(ValueError, match="weight_decay"):
        TorchSGD(weight_decay=1e-4)


def test_config_round_trip():
    optimizer = TorchSGD(learning_rate=0.05, momentum=0.8, l2=1e-4)
    clone = TorchSGD.from_config(optimizer.get_config())
    assert (clone.momentum, clone.nesterov, clone.l2) == (0.8, True, 1e-4)
