"""What every layer shares, at the bottom of the layers: it imports nothing else of xwin.

    errors.py      UserError, ConfigError and the exit codes of every process
    config.py      StrictModel, YAML loading, `--set` overrides, validation messages
    digests.py     stable digests of configs and local paths
    files.py       atomic file writes
    net.py         free_port
    clock.py       UTC timestamps of records and manifests
    hardware.py    which float type runs fast here (dtype `auto`)
    plots.py       figures without pyplot
"""
