"""Power-function EMAs with periodic snapshots, for post-hoc EMA (Karras et al. 2024, EDM2).

`PowerFunctionEMA` keeps one power-function EMA per σ_rel (EDM2 §3 tracks
0.05 and 0.10) of the model's weights and BatchNorm statistics, updated after
every optimizer step with β_t = (1 - 1/t)^(γ+1), and writes all of them to a
snapshot file every `snapshot_every_steps` steps. After training,
`app.posthoc` rebuilds from the snapshots the average of any other profile
(another σ_rel, or the paper's EMA of any decay stopped at any epoch) by
least squares: callbacks/power_profiles.py has the profiles and the solver,
callbacks/power_snapshots.py the file format.

The averages are `EMAAverages` (callbacks/ema_averages.py) given the power
function's β_t as their rule: the same stacked float32 variables, one fused
compiled update for all of them, exact swap-in and state.
"""

import contextlib
import functools

import numpy as np

from callbacks import arguments
from callbacks import power_profiles
from callbacks import power_snapshots
from callbacks import state as state_protocol
from callbacks import variables
from callbacks.defaults import DEFAULT_SIGMA_RELS
from callbacks.ema_averages import EMAAverages


DEFAULT_SNAPSHOT_EVERY_STEPS = 1000


class PowerFunctionEMA(state_protocol.StatefulCallback):
    """Power-function EMAs of the weights, snapshotted for post-hoc reconstruction.

    After optimizer step t (counted from 1 over the whole training, across
    epochs) each average becomes `x <- β_t x + (1 - β_t) θ_t`, `β_t =
    (1 - 1/t)^(γ+1)`, γ from σ_rel: it weighs the iterate of step s by
    (s^(γ+1) - (s-1)^(γ+1)) / t^(γ+1) ≈ (γ+1) s^γ / t^(γ+1). BatchNorm moving
    statistics are averaged too (as EMAN), so a reconstruction can use their
    average or recompute them. Every `snapshot_every_steps` steps, and at the
    end of training, all averages go to `directory` as one `.npz` (float32, or
    float16 at half the disk).
    The state (`get_state`/`set_state`) resumes the averages exactly; a
    snapshot rewritten after a resume is the same file. Under a
    `keras.distribution` (JAX) the averages are laid out like their weights,
    the profile axis unsharded (`ModelParallel`: each device holds its shard
    of each; see `MultiEMA` for an example); a snapshot and `get_state`
    gather them into whole-model arrays when written.

    Example:

    ```python
    ema = PowerFunctionEMA(sigma_rels=(0.05, 0.10), snapshot_every_steps=390,
                           directory="run/power_ema")
    model.fit(x, y, batch_size=128, epochs=200, callbacks=[ema])
    # then: python -m app.posthoc run --decays 0.999 0.9995 --epochs 100 200
    ```

    Args:
        sigma_rels: relative widths of the tracked profiles, each in
            (0, 0.2887) (0.2887 is γ = 0, the uniform average). Defaults to
            (0.05, 0.10).
        snapshot_every_steps: optimizer steps between snapshots; the last
            step of a fit is snapshotted too. Only with a `directory`.
            Defaults to `None` (1000 with a `directory`).
        directory: where snapshots go; `None` writes none (the averages are
            still there for `swapped_in`). A fresh fit refuses a directory
            that already holds snapshots. Defaults to None.
        snapshot_dtype: `"float32"` or `"float16"`. Only with a `directory`.
            Defaults to `None` ("float32" with a `directory`).
    """

    def __init__(self, sigma_rels=DEFAULT_SIGMA_RELS, snapshot_every_steps=None, directory=None,
                 snapshot_dtype=None):
        super().__init__()
        self.sigma_rels = power_profiles.checked_sigma_rels(sigma_rels)
        self.gammas = tuple(power_profiles.sigma_rel_to_gamma(s) for s in self.sigma_rels)
        if snapshot_every_steps is not None:
            arguments.checked_int("snapshot_every_steps", snapshot_every_steps, 1)
        if snapshot_dtype is not None:
            arguments.checked_choice("snapshot_dtype", snapshot_dtype, power_snapshots.SNAPSHOT_DTYPES)
        if directory is None:
            # Without a directory no snapshot is written: a snapshot setting would be ignored.
            for name, value in (("snapshot_every_steps", snapshot_every_steps), ("snapshot_dtype", snapshot_dtype)):
                if value is not None:
                    raise arguments.invalid(name, value, "None when directory is None (no snapshots are written)")
        else:
            snapshot_every_steps = snapshot_every_steps or DEFAULT_SNAPSHOT_EVERY_STEPS
            snapshot_dtype = snapshot_dtype or "float32"
        self.snapshot_every_steps = snapshot_every_steps
        self.directory = directory
        self.snapshot_dtype = snapshot_dtype
        # One update per optimizer step with β_t = (1 - 1/t)^(γ+1) for every γ.
        betas = functools.partial(_power_betas, np.asarray(self.gammas, dtype="float64"))
        self.averages = EMAAverages(len(self.sigma_rels), betas, every_steps=1, bn_mode="eman")

    def get_config(self):
        return {"sigma_rels": self.sigma_rels, "snapshot_every_steps": self.snapshot_every_steps,
                "directory": self.directory, "snapshot_dtype": self.snapshot_dtype}

    # Hooks.

    def on_train_begin(self, logs=None):
        if getattr(self.model, "steps_per_execution", 1) > 1:
            raise ValueError("PowerFunctionEMA updates after every optimizer step: compile the "
                             "model with steps_per_execution=1.")
        self.averages.build(self.model)
        self._start_or_restore()

    def on_epoch_begin(self, epoch, logs=None):
        self.averages.begin_epoch()

    def on_train_batch_end(self, batch, logs=None):
        # Reading `self.model` syncs the weights the update reads (JAX; keras Callback.model).
        updated = self.averages.end_batch(self.params, batch, sync=lambda: self.model)
        if updated and self.directory is not None and self.averages.step % self.snapshot_every_steps == 0:
            self.write_snapshot()

    def on_train_end(self, logs=None):
        # The last steps are snapshotted too (they are the run's end, which post-hoc
        # reconstructions ask for most), unless the last snapshot was taken at this step.
        step = self.averages.step
        if self.directory is not None and step and step % self.snapshot_every_steps:
            self.write_snapshot()

    # Public API.

    def write_snapshot(self):
        """Writes every average now, as `power_ema-<step>.npz` in `directory`; returns its path."""
        # Each (num_sigma_rels,) + shape; sharded ones are gathered here (a snapshot is a whole-model file).
        averages = variables.to_numpy([a.value for a in self.averages.averages])
        per_profile = [[average[j] for average in averages] for j in range(len(self.sigma_rels))]
        return power_snapshots.write_snapshot(
            self.directory, self.averages.step, self.sigma_rels, self.gammas, self.averages.weight_indices,
            [v.path for v in self.averages.averaged], per_profile, self.snapshot_dtype)

    @contextlib.contextmanager
    def swapped_in(self, sigma_rel):
        """Inside the block the model holds the average of `sigma_rel` (its BN statistics too)."""
        if sigma_rel not in self.sigma_rels:
            raise ValueError(f"Unknown sigma_rel {sigma_rel!r}; choose from {self.sigma_rels}.")
        self.model  # JAX: sync before the swap saves the trained weights
        with self.averages.swapped_in(self.sigma_rels.index(sigma_rel)):
            yield

    # The state (callbacks/state.py).

    def _has_state(self):
        return self.averages.averages is not None

    def _start(self):
        self._refuse_old_snapshots()
        self.averages.start()  # x_0 = θ_0

    def _state(self):
        if not self._has_state():
            raise RuntimeError("PowerFunctionEMA has no state before it is trained.")
        return {"sigma_rels": np.asarray(self.sigma_rels), **self.averages.state()}

    def _checked_state(self, state):
        if "sigma_rels" not in state:
            # The previous form: "decays" held the sigma_rels, beside EMA settings that never varied.
            old = ("decays", "every_steps", "warmup", "bn_mode", "batch_scale")
            state = {"sigma_rels": state["decays"], **{k: v for k, v in state.items() if k not in old}}
        state_protocol.check_settings("PowerFunctionEMA", state, {"sigma_rels": self.sigma_rels})
        return state

    def _load_state(self, state):
        self.averages.load_state(state)

    def _refuse_old_snapshots(self):
        if self.directory is not None and power_snapshots.list_snapshots(self.directory):
            raise ValueError(
                f"{self.directory} already holds PowerFunctionEMA snapshots of another training; "
                "pass an empty directory (or restore the state with set_state to continue that run)."
            )


def _power_betas(gammas, step, num_updates):
    return power_profiles.power_betas(gammas, step)
