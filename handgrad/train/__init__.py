"""``handgrad train``: an MLP trained by pure's hand-written backprop on real data.

* :mod:`handgrad.train.config`: :class:`TrainConfig`, whose fields also define the command line;
* :mod:`handgrad.train.data`: scikit-learn's bundled data sets or a ``.npz``, checked and split;
* :mod:`handgrad.train.checkpoints`: orbax checkpoints that survive ``kill -9`` and damaged files;
* :mod:`handgrad.train.plots`: the PNGs of ``--out``;
* :mod:`handgrad.train.loop`: the run itself.

Importing this package loads none of the ``train`` extra (scikit-learn, orbax, matplotlib, tqdm).
"""
