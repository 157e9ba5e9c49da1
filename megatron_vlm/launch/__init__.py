"""Launch-time helpers: what is decided before a job starts (the parallelism planner behind
tools/plan_parallelism.py). Nothing here runs inside training."""
