"""`EMABootstrap`: every K epochs, copy an EMA's weights into the SGD model.

The paper's App. C experiment ("bootstrapping" SGD with its EMA, §3.3): the
authors find no benefit, the SGD noise quickly takes over again. Off by
default in `app.train`; offered to reproduce that finding.
"""

import keras

from callbacks import arguments


class EMABootstrap(keras.callbacks.Callback):
    """Replaces the trained weights by one EMA's weights every `every_epochs`.

    Place it after every callback that evaluates or logs the epoch, so that
    the epoch's logs describe the model before the copy. The optimizer state
    (momentum buffers, step count) is kept.

    Example:

    ```python
    ema = MultiEMA(decays=(0.998,))
    model.fit(x, y, epochs=30, callbacks=[ema, EMABootstrap(ema, every_epochs=10)])
    ```

    Args:
        ema: a `MultiEMA` callback of the same fit.
        every_epochs: copy after every `every_epochs`-th epoch (>= 1): at
            the end of Keras's (0-based) `epoch` when `(epoch + 1) %
            every_epochs == 0`, so after 10, 20, ... epochs for 10.
        decay: which EMA to copy. Defaults to the largest of `ema.decays`.
    """

    def __init__(self, ema, every_epochs, decay=None):
        super().__init__()
        every_epochs = arguments.checked_int("every_epochs", every_epochs, minimum=1)
        decay = max(ema.decays) if decay is None else decay
        arguments.checked_choice("decay", decay, ema.decays)
        self.ema = ema
        self.every_epochs = every_epochs
        self.decay = decay

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_epochs == 0:
            self._copy_ema_into_model()

    def _copy_ema_into_model(self):
        with self.ema.swapped_in(self.decay):
            averaged = [keras.ops.convert_to_numpy(w) for w in self.model.weights]
        for variable, value in zip(self.model.weights, averaged):
            variable.assign(value)
