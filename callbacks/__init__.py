"""Weight-averaging callbacks for `model.fit`: a library any Keras 3 user can import.

    from callbacks import MultiEMA, BatchNormRecompute, SWA

    ema = MultiEMA(decays=(0.968, 0.998), validation_data=(x_val, y_val))
    model.fit(x, y, epochs=30, callbacks=[ema])
    with ema.swapped_in(0.998):
        model.evaluate(x_test, y_test)

| name                   | what                                                     | file |
|------------------------|----------------------------------------------------------|------|
| `MultiEMA`             | several EMAs of the weights, evaluated and selected per epoch | ema.py |
| `BatchNormRecompute`   | exact BatchNorm statistics for every EMA                 | batch_norm.py |
| `recompute_batch_norm` | the same for any weights, as a function                  | batch_norm.py |
| `SWA`                  | stochastic weight averaging (Izmailov et al. 2018)       | swa.py |
| `SWASchedule`, `swa_schedule`, `SWACyclicSchedule` | SWA's learning rates         | swa_schedules.py |
| `EMABootstrap`         | restart SGD from an EMA every few epochs (paper App. C)  | bootstrap.py |
| `PredictionStability`  | epoch-to-epoch prediction stability (paper §3.3)         | stability.py |
| `DivergenceGuard`      | stop before a non-finite step reaches an average         | divergence.py |
| `PowerFunctionEMA`     | power-function EMAs + snapshots for post-hoc EMA (EDM2)  | power_ema.py |

The stateful ones (MultiEMA, SWA, PredictionStability, PowerFunctionEMA) share
one `get_state()` / `set_state()` protocol: a flat mapping of NumPy arrays,
restored at the next train begin (`state`). The rest are helpers: `ema_averages`
(the EMA arithmetic, its decays from a rule), `ema_selection` (best-epoch
selection), `warmup` (the decay warm-up), `variables` (swap, copy, BatchNorm
layers), `validation` (the data forms), `arguments`, `compiled`, `defaults`,
`power_profiles` (post-hoc profiles and least squares, NumPy), `power_snapshots`
(snapshot files). Names are imported on first use, so `import callbacks.warmup`
and `import callbacks.defaults` stay free of Keras.
"""

import importlib

_PUBLIC = {
    "MultiEMA": "callbacks.ema",
    "BatchNormRecompute": "callbacks.batch_norm",
    "recompute_batch_norm": "callbacks.batch_norm",
    "SWA": "callbacks.swa",
    "SWASchedule": "callbacks.swa_schedules",
    "swa_schedule": "callbacks.swa_schedules",
    "SWACyclicSchedule": "callbacks.swa_schedules",
    "EMABootstrap": "callbacks.bootstrap",
    "PredictionStability": "callbacks.stability",
    "DivergenceGuard": "callbacks.divergence",
    "TrainingDiverged": "callbacks.divergence",
    "PowerFunctionEMA": "callbacks.power_ema",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'callbacks' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
