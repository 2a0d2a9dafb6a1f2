"""`widedeep tune`: search hyper-parameters with Optuna, choosing on eval AUC only.

    widedeep tune CONFIG --trials N [--timeout S] [--storage URL] [--study NAME] [--jobs J]

The data is prepared once; every trial trains on the same encoded shards, with the settings its TPE sampler (seeded
by `train.seed`) suggests, reports the eval AUC after each epoch and is pruned when that falls below the median of
earlier trials at the same epoch. The objective is the saved model's eval AUC; the test
split (`[data] test`) is scored and recorded for information, never chosen on.

The search space is the config's optional `[tune]` table; without one, the default space of `widedeep.tune.space` is
searched (every setting below, over ranges that suit the config's optimizers). A `[tune]` table replaces the default
space: only the settings it names are searched, the others keep the config's values.

    [tune]
    embedding_dim = [8, 16, 32]          # integer settings: a list is the set of choices
    batch_size = [256, 512, 1024]
    hidden = [[64, 32], [128, 64, 32]]   # a list of layer-width lists
    dropout = [0.0, 0.3]                 # float settings: [low, high] is a range, log-uniform when low > 0

    [tune.wide_optimizer]                # keys: the hyper-parameters of [train] wide_optimizer's optimizer
    alpha = [0.01, 0.5]
    beta = {low = 1e-4, high = 1e-2}     # the table form: low, high and log (default: low > 0 for floats, false for ints)
    l1 = {choices = [0.0, 1e-4]}         # explicit choices, for any setting

    [tune.deep_optimizer]
    lr = [0.005, 0.2]

`model.embedding_dim` applies to the features without an `embedding_dim` of their own.

Folders: a study (`--study`, by default named after the config file) keeps its outputs and its trials' runs in
``<train.out>/tune/<study>/``: `best.toml` (the config with the best trial's settings: `widedeep train best.toml` trains
that model), `trials.parquet` and `trials.md` (every trial: state, settings, eval and test metrics), `model/` (a copy
of the best trial's model), `history.png` (with the `plots` extra) and `trials/<number>/`.

Storage: studies live in ``<train.out>/tune/journal.log`` (an Optuna journal file: safe for several processes on one
machine, and on NFS), so running the command again continues the study with N more trials. `--storage` names another
journal file or a database URL (``sqlite:///tune.db``, ``postgresql://...``) that workers on several machines share;
`--jobs J` starts J worker processes on this machine (`--worker`: trials only, no outputs). Trials that dead processes
left running are marked failed at the next start (on a database, those of other hosts too, by heartbeat).

Seeds: one process on the default storage draws the same trials from the same config and study; a continued study,
and each worker on a storage named by `--storage`, draws its own (the seed mixes the trials already there and the worker).
"""

from widedeep.tune.study import MissingTuneExtra, TuneResult, tune

__all__ = ["MissingTuneExtra", "TuneResult", "tune"]
