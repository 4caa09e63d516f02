"""The ``handgrad`` application: the console script and everything only it needs.

* :mod:`handgrad.cli`: ``handgrad verify | check | train | bench``;
* :mod:`handgrad.verify`: the report runner over the op table (:mod:`properties.table`);
* :mod:`handgrad.bench`: one training step written three ways, timed in one process;
* :mod:`handgrad.train`: the training application (config, data sets, state, model, run, command, checkpoints, plots),
  which needs the ``train`` extra and imports it only when it runs.

The libraries are ``pure`` (the ops), ``reference`` (the oracle) and ``properties`` (the laws);
imports go one way: pure ← reference ← properties ← handgrad.
"""

__version__ = "0.2.0"
