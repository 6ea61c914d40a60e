"""nnlab.sweep: a multirun's lifecycle in the launching process -- the plan of jobs, the parent run,
resume, signals and stopping, joblib workers, progress and the outcome. Imports the spec and the
record (never the job or the commands); jobs learn only what the sweep hands them."""
