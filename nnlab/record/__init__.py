"""nnlab.record: the MLflow record -- the store and each run's lifecycle, batched and guarded writes,
the offline spool and its replay, the record's names. Imports MLflow, never Hydra, the sweep or the job."""
