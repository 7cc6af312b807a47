"""What a study is: its study file, its search space and its pruner."""
