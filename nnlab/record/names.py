"""The record's names: every MLflow tag nnlab writes and the metric names the sweep and the analysis
share. One definition each; the store, the sweep, the job, ``nnlab.sync`` and ``nnlab.analysis`` import
them from here. Changing one is a breaking change for notebooks and users' scripts (docs: the record).

Pure constants: importing this module imports nothing else.
"""

# --- MLflow's own tags ------------------------------------------------------------------------
PARENT_TAG = "mlflow.parentRunId"  # a sweep's jobs are children of its parent run
NOTE_TAG = "mlflow.note.content"  # a run's description in the UI (Markdown)
GIT_COMMIT_TAG = "mlflow.source.git.commit"
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # MLflow 3 UI: open on training runs

# --- every run --------------------------------------------------------------------------------
FINGERPRINT_TAG = "nnlab.fingerprint"  # hash of the config without how it is run: the same config run twice
RUN_UID_TAG = "nnlab.run_uid"  # nnlab's own id of a run: how nnlab.sync finds a run already (partly) in a store
HOST_TAG, PID_TAG = "nnlab.host", "nnlab.pid"  # the process that writes the run: how stale runs are found
GIT_DIRTY_TAG = "nnlab.git_dirty"
DATASET_TAG = "nnlab.dataset"
BLAS_THREADS_TAG = "nnlab.blas_threads"
OVERRIDES_TAG = "overrides"  # the command line's overrides of the job (or the sweep)
SWEEP_TAG = "sweep_id"  # a sweep's id, on its parent and on every job
JOB_NUM_TAG = "nnlab.job_num"

# --- how a run ended --------------------------------------------------------------------------
FAILURE_TAG = "nnlab.failure"  # diverged | <exception class> | SIGINT | SIGTERM | stale | worker_died | ...
FAILURE_MESSAGE_TAG = "nnlab.failure_message"
FAILURE_EPOCH_TAG = "nnlab.failure_epoch"
WORKER_EXIT_TAG, WORKER_PID_TAG = "nnlab.worker_exit", "nnlab.worker_pid"

# --- a sweep's parent run ---------------------------------------------------------------------
ROLE_TAG = "nnlab.role"  # "sweep" on a sweep's parent run
SWEEP_ROLE = "sweep"
SWEEP_KEY_TAG = "nnlab.sweep_key"  # the same grid has the same key: how resume finds its parent
SWEEP_AXES_TAG = "nnlab.sweep_axes"
SWEEP_DIR_TAG = "nnlab.sweep_dir"
JOBS_TAG = "nnlab.jobs"
JOBS_FINISHED_TAG, JOBS_FAILED_TAG, JOBS_NOT_RUN_TAG = "nnlab.jobs_finished", "nnlab.jobs_failed", "nnlab.jobs_not_run"
POOL_RESTARTS_TAG = "nnlab.worker_pool_restarts"
BEST_RUN_TAG, BEST_RUN_ID_TAG = "nnlab.best_run", "nnlab.best_run_id"
SUMMARY_METRIC = "test_acc"  # what "best" means for a sweep
JOBS_FINISHED, JOBS_FAILED, SWEEP_SECONDS = "sweep/jobs_finished", "sweep/jobs_failed", "sweep/seconds"
BEST_METRIC = f"sweep/best_{SUMMARY_METRIC}"

# --- params and metrics of a training run -----------------------------------------------------
GROUP_PARAMS = ("init", "activation", "optimizer", "dataset")  # each config group's choice
FINAL_METRICS = ("test_loss", "test_acc", "best_val_acc", "epochs_run", "train_seconds")
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc")
LAYER_STATS = ("grad_norm", "act_mean", "act_std", "act_saturation", "branch_ratio")  # <stat>/layer_{i}, i = 1 nearest the input
