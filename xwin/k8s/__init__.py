"""Kubernetes: stage attempts as Jobs built from the client's typed models (`render`), Job
profiles per stage (`profiles`), the executor that runs them in a cluster (`executor`, with
`watch` and `diagnose`), `xwin render` (`cli`), and helm/kubectl for tests (`tools`).

The controller uses `load_profiles`, `render_stage` (the local executor runs the rendered
container as processes) and `KubernetesExecutor`; only `executor` imports the API client's
configuration loaders, and nothing here imports torch."""
