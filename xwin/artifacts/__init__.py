"""The artifact store: folders (models, datasets, reports) made visible by one manifest written
last, so a crash mid-upload never leaves something a later stage could trust.

    store.py       the ArtifactStore interface, Manifest, the store's errors
    factory.py     open_store(StoreConfig): the local or the S3 backend
    config.py      StoreConfig, the pipeline config's `store` section
    local.py       LocalStore: a folder on this machine
    s3.py          S3Store (boto3 + tenacity), with s3_transfer.py and s3_errors.py
    folders.py     hashing, atomic folder writes and transfer progress both backends share
    stage_io.py    StageSpec and StageContext: one stage run's inputs and output in the store
    cli.py         `xwin artifacts put | get | ls`
"""
