"""One package per job. Each reads top to bottom and uses the shared pieces (runs, data, models,
inference); a job never imports another job."""
