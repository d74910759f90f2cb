"""The lifecycle every job shares: options, the run directory (lock first), the training run
(trainer, resume, graceful stop), evaluation bookkeeping and the report's plots."""
