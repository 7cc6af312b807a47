"""`tune confirm`: retraining the best settings with fresh seeds (the plan and its enqueued runs),
what the runs showed, and the statistics tune states about them."""
