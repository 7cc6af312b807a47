"""A study's bookkeeping in the Optuna storage: opening it, riding out outages, trial records,
checkpoints, the budget and the start gate, the study manager that the workers, launch,
status and benches share, the gRPC proxy, and the one module that touches Optuna's private names."""
