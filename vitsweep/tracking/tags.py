"""Every name vitsweep writes into Optuna and MLflow, and nothing else: no imports, so that any
module (a table printer included) can use them without loading torch or MLflow. A test checks
that no other module spells a ``vitsweep.`` tag or one of these attrs as a literal.

Sweeps: one parent run per study (its id in the study's user attr ``mlflow_parent_run_id``), one
nested run per trial (tag ``mlflow.parentRunId``; its id in the trial's user attr ``mlflow_run_id``).
Promotions: a parent run per invocation (kind ``promotion``), a nested run per config and seed
(kind ``promoted``).
"""

# --- Optuna: study user attrs
PARENT_ATTR = "mlflow_parent_run_id"  # the sweep's MLflow parent run
SWEEP_ATTR = "vitsweep_sweep"  # the study's sweep (SweepConfig.to_dict(), URLs without passwords)
STOPPED_ATTR = "vitsweep_stopped"  # why the study stopped early (a plateau), once it has
STREAMS_ATTR = "vitsweep_seed_streams"  # how many worker processes have drawn a sampler seed

# --- Optuna: trial user attrs
RUN_ATTR = "mlflow_run_id"  # the trial's MLflow run
RUN_DIR_ATTR = "run_dir"  # the trial's checkpoint folder
REASON_ATTR = "fail_reason"  # a failed (or interrupted) trial's reason
FLOPS_ATTR = "flops"  # a trial's training compute (FLOPs estimate), set as it ends
RETRY_OF_ATTR = "retry_of"  # the trial number a retried trial re-runs
RESUMED_FROM_EPOCH_ATTR = "resumed_from_epoch"  # the epoch a retried trial continued from (0: scratch)
RESUMED_FROM_ATTR = "resumed_from"  # the checkpoint folder it continued from

# --- Optuna: trial system attrs (set on a re-queued trial, as Optuna's own retry callback does)
FAILED_TRIAL_SYSATTR = "failed_trial"
RETRY_HISTORY_SYSATTR = "retry_history"
ENQUEUED_SYSATTR = "fixed_params"  # Study.enqueue_trial's mark: a queued point, not one the sampler drew

# Optuna trial state -> MLflow run status
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}

# --- MLflow tags
TAG_KIND = "vitsweep.kind"
KIND_SWEEP, KIND_TRIAL, KIND_PARENT, KIND_RUN = "sweep", "trial", "promotion", "promoted"
TAG_STUDY, TAG_TRIAL = "optuna.study_name", "optuna.trial_number"
TAG_PARENT = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"
TAG_STATE, TAG_REASON = "vitsweep.trial_state", "vitsweep.reason"
TAG_SEED, TAG_SOURCE, TAG_KEY = "vitsweep.seed", "vitsweep.source_run_id", "vitsweep.promote_key"
TAG_STOP, TAG_PUBLISHED, TAG_RUN_DIR = "vitsweep.stop_reason", "vitsweep.published", "vitsweep.run_dir"
TAG_SWEEP_FILE, TAG_N_TRIALS = "vitsweep.sweep_file", "vitsweep.n_trials"
TAG_RETRY_OF, TAG_RETRY_OF_RUN = "vitsweep.retry_of", "vitsweep.retry_of_run"
TAG_RESUMED_FROM_EPOCH, TAG_RESUMED_FROM_TRIAL = "vitsweep.resumed_from_epoch", "vitsweep.resumed_from_trial"
TAG_PREVIOUS_PARENT = "vitsweep.previous_parent_run_id"
# a promoted run: the sweep's value of its config, the config in words, and where it continued from
TAG_SWEEP_VALUE, TAG_CONFIG, TAG_CONTINUED_FROM = "vitsweep.sweep_value", "vitsweep.config", "vitsweep.continued_from"
# a promotion's parent run: its options and the trials it picked
TAG_TOP, TAG_EPOCHS, TAG_SEEDS = "vitsweep.top", "vitsweep.epochs", "vitsweep.seeds"
TAG_PATIENCE, TAG_MIN_DELTA, TAG_PICKED = "vitsweep.patience", "vitsweep.min_delta", "vitsweep.picked_trials"
TAG_VALUE_MAX = 8000  # MLflow's longest tag value (mlflow.utils.validation.MAX_TAG_VAL_LENGTH)
# A trial run's metrics: the trial's value as its own metric (best_<metric>, and in percent for an
# accuracy, best_<metric>_pct, which the saved view sorts by and shows); the trainer's bookkeeping
# (lr, images/s, epoch time, FLOPs, epochs run...) under a prefix, so that the run page's charts open on
# the model's metrics (train_*, val_*) and not on eleven alphabetical ones.
BEST_PREFIX, PERCENT_SUFFIX, BOOKKEEPING_PREFIX = "best_", "_pct", "run/"
MODEL_METRIC_PREFIXES = ("train_", "val_", "cooldown_", "best_", "test_")
EPOCHS_METRIC = "epochs_run"
CHAMPION = "champion"  # the registered model alias of the best promoted version
MODEL_PREFIX = "vitsweep-"  # a study's registered model: vitsweep-<study>
MODELS_SCHEME = "models:/"  # a registered model reference: models:/vitsweep-<study>@champion or .../<version>

# Artifacts: a run that has a model logs its best checkpoint as this file
CHECKPOINT_ARTIFACT = "checkpoint/best.pt"
REPORT_ARTIFACT_DIR = "report"
