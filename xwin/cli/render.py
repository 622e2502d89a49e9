"""`xwin render`: every Kubernetes object a pipeline run would create, as YAML, for review or
for `kubectl apply -f -` by hand."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `xwin` app."""
    app.command()(render)


def render(
    config: Annotated[Path, typer.Argument(help="pipeline config (YAML)")],
    set_: Annotated[list[str], typer.Option("--set", help="override a field: section.field=value")] = [],  # noqa: B006 (typer reads it, never mutates)
    stage: Annotated[list[str], typer.Option(help="only these stages (repeatable)")] = [],  # noqa: B006
    run_id: Annotated[str | None, typer.Option(help="run id in names and labels (default: run.name)")] = None,
    namespace: Annotated[str | None, typer.Option(help="default: executor.namespace")] = None,
    validate: Annotated[str | None, typer.Option(
        metavar="VERSION",
        help="also check every object against this Kubernetes version's schemas, e.g. 1.33.0 "
        "(needs the kubernetes-validate package)",
    )] = None,
) -> None:
    """Print the ConfigMaps, headless Services, NetworkPolicies and Jobs of every stage the run
    would execute (as if the store were empty), with the judge server (Deployment, Service,
    NetworkPolicy) of a judged stage whose judge has no base_url, as one multi-document YAML
    stream."""
    from xwin.config import load_config
    from xwin.controller.jobs import planned_jobs
    from xwin.core.errors import UserError
    from xwin.executors.kubernetes.judge_server import stage_manifests
    from xwin.executors.kubernetes.render import dump_manifests
    from xwin.executors.profiles import load_judge_server_profile

    try:
        pipeline = load_config(config, set_)
        jobs = planned_jobs(pipeline, run_id or pipeline.run.name, stages=stage or None)
        ns = namespace or pipeline.executor.namespace
        ex = pipeline.executor
        judge_profile = load_judge_server_profile(ex.profiles_dir, ex.profiles, ex.images)
        docs = [d for job in jobs for d in stage_manifests(job, ex, ns, judge_profile)]
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if pipeline.store.kind != "s3":
        typer.echo("warning: store.kind is local; stage pods need an s3 store to share "
                   "artifacts", err=True)
    if validate:
        _validate(docs, validate)
    sys.stdout.write(dump_manifests(docs))


def _validate(docs: list[dict], version: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        typer.echo("error: --validate needs `pip install kubernetes-validate`", err=True)
        raise typer.Exit(2) from None
    failures = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {e.message}")
    if failures:
        typer.echo("error: invalid manifests for Kubernetes " + version + ":\n  "
                   + "\n  ".join(failures), err=True)
        raise typer.Exit(1)
