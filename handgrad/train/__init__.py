"""``handgrad train``: an MLP, or a transformer language model, trained by pure's hand-written backprop on real data.

* :mod:`handgrad.train.config`: :class:`TrainConfig` and :class:`LMConfig`, whose fields also define the command line;
* :mod:`handgrad.train.data`: scikit-learn's bundled data sets or a ``.npz``, checked and split;
* :mod:`handgrad.train.checkpoints`: orbax checkpoints that survive ``kill -9`` and damaged files;
* :mod:`handgrad.train.plots`: the PNGs of ``--out``;
* :mod:`handgrad.train.state`: the arrays of a run and where it stands, immutable values;
* :mod:`handgrad.train.model`: the objective and the compiled programs that train and evaluate it;
* :mod:`handgrad.train.run`: one run: fresh or resumed state, the training loop, evaluation, early stopping;
* :mod:`handgrad.train.command`: the command's entry point, :func:`~handgrad.train.command.train`;
* :mod:`handgrad.train.outputs`: what ``--out`` holds, each file written whole or not at all;
* :mod:`handgrad.train.text`, :mod:`handgrad.train.lm_model`, :mod:`handgrad.train.lm`: the language model's
  bytes and bigram baseline, its compiled programs, and its run and entry point;
* :mod:`handgrad.train.launch`: ``--processes N``, N processes of the command on this machine.

Importing this package loads none of the ``train`` extra (scikit-learn, orbax, matplotlib, tqdm).
"""
