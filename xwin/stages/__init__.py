"""The Xwin-LM stages: the stage table and one module per stage that is not a trainer.

    registry.py    the stage table: one row per stage (config, entry point, inputs, kind, image),
                   and run_stage: `xwin stage NAME --config SPEC`, the one way a stage starts
    prepare.py     the run's base model and data, imported into the store
    sample.py      N distinct responses per prompt (the Xwin-Set before scoring)
    score.py       the reward model scores every response
    select.py      best-of-N for rs, ranked pairs for dpo
    eval.py        judged benchmarks and RM scores of every model
    annotate.py    judge-labelled preference pairs (Xwin-Pair)

The training stages live in `xwin.train`, each trainer with its torch-free config beside it.
Every stage module here defines its config and `run(config, ctx) -> metrics` and is torch-free at
import: the controller reads the configs, only the stage process runs them.
"""
