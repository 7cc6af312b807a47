"""A study in the Optuna storage: opening it and its lock, riding out outages, trial records,
checkpoints, the budget's arithmetic, the gRPC proxy's client (its token, TLS and tune's own
calls), and the one module that touches Optuna's private names."""
