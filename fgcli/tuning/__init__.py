"""`fgcli tune`: an equal-budget hyper-parameter search on the validation split, built on Optuna.

`run.plan_study` / `run.run_study` search one method from a starting recipe (`fgcli tune --method M`);
`compare.compare` runs one study per arm with the same trials, pruner and maximum epochs, then trains each
arm's best recipe with several seeds and evaluates it once on the test split (`fgcli tune --recipes a,b`).
"""
