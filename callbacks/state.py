"""The one state protocol of the stateful callbacks, and the one deferred restore.

`MultiEMA`, `PowerFunctionEMA`, `SWA` and `PredictionStability` each speak
the same pair, as torch's `state_dict()` / `load_state_dict()`: `get_state()`
returns a flat `{name: NumPy array}` (`np.savez(path, **state)` stores it),
and `set_state(state)` takes the same back (`dict(np.load(path))`). A
restored state replaces the reset of the next `on_train_begin`, so a resumed
`fit(initial_epoch=...)` continues exactly; the fit after that starts afresh.
"""

import copy

import keras
import numpy as np


def flat_state(state):
    """`state` as `{str: np.ndarray}`: nested dicts and lists are joined with "/", `None` dropped.

    A flat state comes back as it was (its values as arrays). The nesting is
    what `SWA.get_state()` returned before this protocol (`{"average": [arrays],
    ...}`, `"average": None` before a capture): old checkpoints hold it, and
    it reads as today's `"average/0"`, `"average/1"`, ... keys.
    """
    flat = {}

    def add(prefix, value):
        if isinstance(value, dict):
            for key, item in value.items():
                add(f"{prefix}/{key}" if prefix else str(key), item)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                add(f"{prefix}/{index}", item)
        elif value is not None:
            flat[prefix] = np.asarray(value)

    add("", dict(state))
    return flat


def python_value(array):
    """A 0-d array of a state (as `np.load` gives it) as the Python value it holds."""
    return np.asarray(array).item()


def check_settings(owner, state, settings):
    """Raises ValueError if `state` was saved with settings other than `settings` ({name: value})."""
    for name, current in settings.items():
        saved = np.asarray(state[name])
        saved = tuple(saved.tolist()) if isinstance(current, tuple) else saved.item()
        if saved != current:
            raise ValueError(
                f"The state was saved with {name}={saved!r}, but this {owner} has "
                f"{name}={current!r}. Create the {owner} with the same arguments."
            )


def fresh_copy(callback, memo):
    """`copy.deepcopy(callback)`: a fresh, untrained callback of the same `get_config()`.

    keras-tuner deep-copies callbacks before each trial. A dataset cannot be
    deep-copied (and is immutable), so the data is shared; a callback among
    the arguments (the `MultiEMA` of the same fit) is the copy made in the same
    pass. Use `get_state()` to carry a state.
    """
    config = {name: copy.deepcopy(value, memo) if isinstance(value, keras.callbacks.Callback) else value
              for name, value in callback.get_config().items()}
    return type(callback)(**config)


class StatefulCallback(keras.callbacks.Callback):
    """A callback with `get_state()` / `set_state()` and a restore at the next train begin.

    A subclass calls `_start_or_restore()` from `on_train_begin` and defines:
    `_has_state()` (it holds a live state: it has begun training),
    `_start()` (the reset of a fresh fit), `_state()` (the live state, flat),
    `_load_state(state)` (applies a checked state) and, to refuse or convert a
    state, `_checked_state(state)`.
    """

    def __init__(self):
        super().__init__()
        self._restored_state = None

    def get_state(self):
        """The state as a flat dict `{name: NumPy array}`; a state restored
        by `set_state` and not yet used is returned as it is."""
        if self._restored_state is not None and not self._has_state():
            return dict(self._restored_state)
        return flat_state(self._state())

    def set_state(self, state):
        """Restores `get_state()`'s result for the next `on_train_begin`.

        Rule: a restored state replaces the reset of the next train begin (a
        resumed `fit(initial_epoch=...)` continues exactly); the fit after
        that starts afresh. If the callback already holds a state, the
        restored one is also applied at once.
        """
        self._restored_state = self._checked_state(flat_state(state))
        if self._has_state():
            self._load_state(self._restored_state)

    def _start_or_restore(self):
        state, self._restored_state = self._restored_state, None
        if state is None:
            self._start()
        else:
            self._load_state(state)

    def _checked_state(self, state):
        return state
