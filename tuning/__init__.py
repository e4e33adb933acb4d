"""One-shot tuning of EMA training with KerasTuner (paper §3.1); see app/tune.py.

- `hypermodel.OneShotHyperModel`: a trial is one `app.train` run on the 80/20
  split; its objective is the best validation accuracy of any EMA at any epoch.
- `oracles`: a resumable grid oracle, and KerasTuner's random and Bayesian ones.
- `tuner.OneShotTuner`: gives each trial its own directory.
- `hparams_logging`: TensorBoard HParams summaries written without TensorFlow.
"""
