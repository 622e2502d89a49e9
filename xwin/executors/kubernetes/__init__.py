"""The Kubernetes executor: each stage attempt as objects built from the client's typed models.

    settings.py    KubernetesConfig: the pipeline config's `executor.kubernetes` section
    naming.py      names and labels derived from (run, stage, attempt) alone
    render.py      the ConfigMap, headless Service and Job of an attempt, from its launch
    executor.py    KubernetesExecutor: create, follow (watch.py), diagnose (diagnose.py), cancel
    watch.py       resumable watches over the API
    diagnose.py    why a pod failed or waits: OOMKilled, ImagePullBackOff, Unschedulable, events

Only executor.py loads the API client's configuration; nothing here imports torch.
"""
