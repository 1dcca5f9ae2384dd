"""Training: the full-data model with its checkpoints, many small models at once, the executors that
run independent trainings (in-process, Dask, submitit), and the LDS ground truth (retraining on
random subsets)."""
