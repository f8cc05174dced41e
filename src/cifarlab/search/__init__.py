"""`cifarlab search`: find the best network a rule set allows, with Optuna.

A search file (TOML) is data: a base recipe, the rules, the budget and method, the dimensions
to explore and designs to try first; `space` reads, checks and samples it.

One trial:
  1. Optuna's sampler proposes a design and training settings.
  2. Rules before training: the network is built and traced (params, MACs, receptive field,
     required / forbidden layers) and, when the file sets a time budget, its training time is
     predicted from a few timed steps. A candidate that breaks a rule is *rejected*: it costs no
     training, and the rules it broke are recorded (a user attribute) and given to the sampler
     as constraint values (`Trial.set_constraint`), so TPE learns where the feasible region is
     (its "good" group: the best tenth of the trained designs, `pruning.trained_gamma`).
  3. Training on the training set minus a validation split; the test set is never loaded.
     Validation accuracy is reported after every epoch and the trial is stopped early when it
     is hopeless: Optuna's Hyperband / successive halving for one objective, and for several
     objectives (which Optuna's pruners do not handle) `dominance_prune`: at each rung a trial
     is stopped when most trials that are no more expensive have a better validation accuracy
     at the same epoch.
  4. The trial's run directory is an ordinary one (config, history, metrics, checkpoints).

Storage: an SQLite file in the study directory by default (`runs/<study>/study.db`), or any
SQLAlchemy URL (`--storage postgresql://...`) shared by workers on many machines. A trial that
was running when its worker died is marked failed and re-queued: at once when the dead worker
was on this machine (its process is gone), else by Optuna's heartbeat after a grace period;
the re-queued trial resumes the dead trial's run directory from its last checkpoint.

The package, one concern per module (each imports only those above it):

  fidelity  the proxy rung ([search] fidelity) and what it is worth (Spearman)
  space     a search file: the design space as data, read, checked, sampled into trials
  timing    a few timed training steps (the engine's own) -> predicted training time
  rules     the rules before training (analysis.assess), untrainable candidates, rule keys
  pruning   Optuna's sampler and pruner; the multi-objective dominance rule
  trials    reading a study: outcomes, time used, summary, best trial / Pareto front
  storage   the Optuna storage: open, name, create or load a study, database errors
  workers   processes: dead workers' trials re-queued; run_workers starts N workers
  corrupt   corrupt_acc: accuracy on corrupted validation images (an objective)
  worker    one worker: reject, proxy, train, prune, record a trial
  run       run_search: the loop until the budget is used
  final     trainings after a search: the proxy check, the schedule scaled to the budget
  winner    the winner as an ordinary recipe
  report    the HTML report of a study
  cli       `cifarlab search ...` argument parsing (imports neither torch nor optuna)

Importing this package imports nothing else (the CLI stays light).
"""

STORAGE_ENV = "CIFARLAB_SEARCH_STORAGE"  # how --workers hands the URL on (not in argv)
