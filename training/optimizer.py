"""SGD with Nesterov momentum and coupled L2 weight decay, in PyTorch's form.

The papers train with `torch.optim.SGD(momentum=0.9, nesterov=True,
weight_decay=wd)`. Keras's `SGD` differs in two ways that change results
(see docs/fidelity.md): its `weight_decay` is decoupled (applied outside the
momentum), and its Nesterov buffer stores `-lr * g`, so the two disagree
whenever the learning rate changes (every step under cosine annealing).
This optimizer follows PyTorch exactly:

    g <- grad + wd * w          # coupled L2, on every trainable variable
    v <- momentum * v + g
    w <- w - lr * (g + momentum * v)      # nesterov=True
    w <- w - lr * v                       # nesterov=False
"""

import keras
from keras import ops


class TorchSGD(keras.optimizers.Optimizer):
    """PyTorch-style SGD: coupled L2 weight decay and momentum buffer.

    Example:

    ```python
    optimizer = TorchSGD(learning_rate=0.1, momentum=0.9, l2=5e-4)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    ```

    Args:
        learning_rate: float or `LearningRateSchedule`. Defaults to 0.1.
        momentum: momentum factor in [0, 1). Defaults to 0.9.
        nesterov: whether to use Nesterov momentum. Defaults to True.
        l2: coupled weight decay: `l2 * w` is added to the gradient of every
            trainable variable (BatchNorm scales/offsets and biases too, as
            PyTorch's `weight_decay` does). Defaults to 0.
        name: optimizer name. Defaults to "torch_sgd".
        **kwargs: base optimizer arguments (`clipnorm`, ...); the decoupled
            `weight_decay` of Keras is refused to avoid mixing the two.
    """

    def __init__(
        self,
        learning_rate=0.1,
        momentum=0.9,
        nesterov=True,
        l2=0.0,
        name="torch_sgd",
        **kwargs,
    ):
        if kwargs.get("weight_decay"):
            raise ValueError(
                "Invalid argument `weight_decay` for TorchSGD: it applies "
                "coupled L2 decay through `l2`. Received: "
                f"weight_decay={kwargs['weight_decay']}"
            )
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(
                "Invalid value for argument `momentum`. Received: "
                f"momentum={momentum}. Expected a value in [0, 1)."
            )
        if l2 < 0:
            raise ValueError(
                f"Invalid value for argument `l2`. Received: l2={l2}. "
                "Expected a value >= 0."
            )
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.l2 = float(l2)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.l2:
            gradient = ops.add(gradient, ops.multiply(variable, self.l2))
        buffer = self.momentums[self._get_variable_index(variable)]
        self.assign(buffer, ops.add(ops.multiply(buffer, self.momentum), gradient))
        if self.nesterov:
            step = ops.add(gradient, ops.multiply(buffer, self.momentum))
        else:
            step = buffer
        self.assign_sub(variable, ops.multiply(step, learning_rate))

    def get_config(self):
        config = super().get_config()
        config.update(
            {"momentum": self.momentum, "nesterov": self.nesterov, "l2": self.l2}
        )
        return config
