"""nnlab.analysis: the MLflow record -> tidy pandas frames -> aggregates, figures and a written reading.

Used by the notebooks and by ``python -m nnlab.report``; it only reads the record, never trains.
"""
from .records import (EPOCH_METRICS, FAILURE_TAG, FINAL_METRICS, GROUP_PARAMS, LAYER_STATS, PARENT_TAG,
                      AnalysisError, at_step, check_metrics, connect, experiment_names, get_experiment_id,
                      history_frame, layer_frame, load_history, load_runs, local_store_uri, parse_param,
                      resolve_uri, with_params)
from .stats import (aggregate, bootstrap_interval, config_label, param_columns, summarize, t_interval,
                    varying_params)

__all__ = [
    "EPOCH_METRICS", "FAILURE_TAG", "FINAL_METRICS", "GROUP_PARAMS", "LAYER_STATS", "PARENT_TAG",
    "AnalysisError", "at_step", "check_metrics", "connect", "experiment_names", "get_experiment_id",
    "history_frame", "layer_frame", "load_history", "load_runs", "local_store_uri", "parse_param", "resolve_uri",
    "with_params",
    "aggregate", "bootstrap_interval", "config_label", "param_columns", "summarize", "t_interval",
    "varying_params",
]
