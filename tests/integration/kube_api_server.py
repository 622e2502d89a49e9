"""An in-process HTTP server that speaks the part of the Kubernetes API the executor uses, so the
executor is tested through its real client over real HTTP (no kube-apiserver ships for these
machines; see ENVIRONMENT.md).

Served: Jobs (create, get, list, watch, delete, merge-patch), Deployments, Services, ConfigMaps
and NetworkPolicies (create, get, list, delete), pods (list, log), events (list). Lists take
equality label selectors and `metadata.name` / `involvedObject.name` field selectors. Watches
are chunked JSON lines from a resourceVersion, end at timeoutSeconds, and can be told to break
(`drop_next_watch_after`) or to answer 410 Gone (`expire_history`).

A scheduler thread per Job plays a kubelet and Job controller by a script chosen per stage
(`server.scripts[stage]`): succeed, oom, user_error, image_pull, unschedulable, hang
(until `complete_job`). A Deployment (the judge server) gets its one pod by
`server.deployment_scripts[stage]`: ready (after `deployment_ready_s`), image_pull,
unschedulable, crash (CrashLoopBackOff), never (Running, never Ready). Deleting a Deployment
deletes its pods.

`spec.suspend` is honoured as the Job controller does: a suspended Job gets no pods and the
condition Suspended; suspending a running one deletes its pods (no failure counted); resuming
starts them afresh. A test plays Kueue by patching `spec.suspend` through the client.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

STEP_S = 0.05
# script -> how the last pod fails: (exit code, container reason, its log)
FAILURES = {
    "oom": (137, "OOMKilled", "loading model\nKilled\n"),
    "user_error": (2, "Error", "error: train.jsonl line 3: messages: field required\n"),
}
_ROUTE = re.compile(
    r"^/(?:api/v1|apis/batch/v1|apis/apps/v1|apis/networking\.k8s\.io/v1)/namespaces/(?P<ns>[^/]+)/"
    r"(?P<kind>jobs|deployments|services|configmaps|networkpolicies|pods|events)"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>log))?$"
)
_KIND = {"jobs": ("Job", "batch/v1"), "deployments": ("Deployment", "apps/v1"),
         "services": ("Service", "v1"),
         "configmaps": ("ConfigMap", "v1"), "pods": ("Pod", "v1"), "events": ("Event", "v1"),
         "networkpolicies": ("NetworkPolicy", "networking.k8s.io/v1")}


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeKubeAPI:
    def __init__(self):
        self.lock = threading.Condition()
        self.objects: dict[tuple[str, str, str], dict] = {}  # (kind, ns, name) -> object
        self.history: list[tuple[int, str, str, dict]] = []  # (rv, kind, type, object)
        self.oldest_rv = 0  # watches from before this get 410
        self.rv = 100
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, query)
        self.headers: list[dict[str, str]] = []  # each request's headers
        self.deletes: list[tuple[str, str, str | None]] = []  # (kind, name, propagationPolicy)
        self.scripts: dict[str, str] = {}  # stage -> script name; default "succeed"
        self.deployment_scripts: dict[str, str] = {}  # stage -> script name; default "ready"
        self.deployment_ready_s = 0.2  # how long a "ready" Deployment's pod takes to be Ready
        self.logs: dict[str, str] = {}  # pod name -> log text
        self._drop_after: int | None = None
        self.watch_epoch = 0  # bumping it breaks every open watch (an API server restart)
        self.stopped = threading.Event()
        handler = type("Handler", (_Handler,), {"api": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.stopped.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- test controls ---------------------------------------------------------------------------

    def drop_next_watch_after(self, events: int) -> None:
        """The next watch request breaks its connection after sending this many events."""
        with self.lock:
            self._drop_after = events

    def expire_history(self) -> None:
        """Restart and compact: open watches break, and every resourceVersion seen so far is
        gone, so resuming from one gets 410 Gone."""
        with self.lock:
            self.rv += 5  # the rest of the cluster moved on meanwhile
            self.oldest_rv = self.rv
            self.watch_epoch += 1
            self.lock.notify_all()

    def touch_job(self, name: str, ns: str = "xwin", **status_fields) -> None:
        """A status change that ends nothing (one MODIFIED event)."""
        self._job_status(ns, name, **status_fields)

    def complete_job(self, name: str, ns: str = "xwin") -> None:
        """Let a `hang` Job's pods succeed."""
        job = self.get("jobs", ns, name)
        pods = [p for p in self.list("pods", ns)
                if p["metadata"]["labels"].get("batch.kubernetes.io/job-name") == name]
        for pod in pods:
            self.logs[pod["metadata"]["name"]] = "done\n"
            self._pod_phase(pod, "Succeeded", terminated={
                "exitCode": 0, "reason": "Completed", "startedAt": now(), "finishedAt": now()})
        self._job_status(ns, name, active=0, ready=0, succeeded=job["spec"]["completions"],
                         completionTime=now(),
                         conditions=[condition("SuccessCriteriaMet", "CompletionsReached", ""),
                                     condition("Complete", "CompletionsReached", "")])

    def watch_requests(self) -> list[dict]:
        return [q for m, p, q in self.requests if m == "GET" and q.get("watch") in ("true", "1")]

    def count(self, method: str, kind: str) -> int:
        return sum(1 for m, p, q in self.requests if m == method and _ROUTE.match(p)
                   and _ROUTE.match(p)["kind"] == kind and not _ROUTE.match(p)["name"])

    def get(self, kind: str, ns: str, name: str) -> dict | None:
        with self.lock:
            obj = self.objects.get((kind, ns, name))
            return copy.deepcopy(obj) if obj else None

    def list(self, kind: str, ns: str = "xwin") -> list[dict]:
        with self.lock:
            return [copy.deepcopy(o) for (k, n, _), o in self.objects.items() if k == kind and n == ns]

    # -- object store ----------------------------------------------------------------------------

    def _put(self, kind: str, obj: dict, event: str) -> dict:
        """Store (or delete) an object with a new resourceVersion and record the event."""
        with self.lock:
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            key = (kind, obj["metadata"]["namespace"], obj["metadata"]["name"])
            if event == "DELETED":
                self.objects.pop(key, None)
            else:
                self.objects[key] = obj
            self.history.append((self.rv, kind, event, copy.deepcopy(obj)))
            self.lock.notify_all()
            return copy.deepcopy(obj)

    def create(self, kind: str, ns: str, body: dict) -> tuple[int, dict]:
        name = body["metadata"]["name"]
        with self.lock:
            if (kind, ns, name) in self.objects:
                return 409, status(409, "AlreadyExists", f'{kind} "{name}" already exists')
            kind_name, api_version = _KIND[kind]
            body.setdefault("kind", kind_name)
            body.setdefault("apiVersion", api_version)
            body["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=now())
            created = self._put(kind, body, "ADDED")
        if kind == "deployments":
            threading.Thread(target=self._run_deployment, args=(ns, name), daemon=True).start()
        if kind == "jobs":
            if created["spec"].get("suspend"):
                self._set_suspended(ns, name, True)
            else:
                threading.Thread(target=self._schedule, args=(ns, name), daemon=True).start()
        return 201, created

    def patch(self, kind: str, ns: str, name: str, patch: dict) -> tuple[int, dict]:
        """A JSON merge patch (RFC 7386); for a Job, a change of spec.suspend acts as the Job
        controller does."""
        with self.lock:
            obj = self.objects.get((kind, ns, name))
            if obj is None:
                return 404, status(404, "NotFound", f'{kind} "{name}" not found')
            was = bool(obj.get("spec", {}).get("suspend"))
            patched = self._put(kind, merge_patch(copy.deepcopy(obj), patch), "MODIFIED")
        now_suspended = bool(patched.get("spec", {}).get("suspend"))
        if kind == "jobs" and now_suspended != was:
            self._set_suspended(ns, name, now_suspended)
            if not now_suspended:
                threading.Thread(target=self._schedule, args=(ns, name), daemon=True).start()
            return 200, self.get(kind, ns, name)
        return 200, patched

    def _set_suspended(self, ns: str, name: str, suspended: bool) -> None:
        """The Job controller's side of suspension: a suspended Job's pods are deleted (not
        counted as failed) and it carries the condition Suspended."""
        if suspended:
            self._delete_pods(ns, name)
        with self.lock:
            job = self.objects.get(("jobs", ns, name))
            if job is None:
                return
            job = copy.deepcopy(job)
            st = job.setdefault("status", {})
            conditions = [c for c in st.get("conditions", []) if c["type"] != "Suspended"]
            cond = condition("Suspended", "JobSuspended" if suspended else "JobResumed",
                             "Job suspended" if suspended else "Job resumed")
            cond["status"] = "True" if suspended else "False"
            st["conditions"] = [*conditions, cond]
            if suspended:
                st.update(active=0, ready=0)
                st.pop("startTime", None)
            self._put("jobs", job, "MODIFIED")

    def delete(self, kind: str, ns: str, name: str, policy: str | None) -> tuple[int, dict]:
        with self.lock:
            obj = self.objects.get((kind, ns, name))
            if obj is None:
                return 404, status(404, "NotFound", f'{kind} "{name}" not found')
            self.deletes.append((kind, name, policy))
            if kind == "jobs" and policy == "Foreground":
                # Foreground: the Job stays, marked, until its pods are gone.
                obj = copy.deepcopy(obj)
                obj["metadata"]["deletionTimestamp"] = now()
                obj["metadata"]["finalizers"] = ["foregroundDeletion"]
                self._put(kind, obj, "MODIFIED")
                threading.Thread(target=self._finish_foreground, args=(ns, name), daemon=True).start()
                return 200, obj
            self._put(kind, copy.deepcopy(obj), "DELETED")
            if kind == "jobs":
                self._delete_pods(ns, name)
            if kind == "deployments":
                self._delete_deployment_pods(ns, obj)
            return 200, obj

    def _finish_foreground(self, ns: str, name: str) -> None:
        time.sleep(STEP_S)
        self._delete_pods(ns, name)
        with self.lock:
            if (job := self.objects.get(("jobs", ns, name))) is not None:
                self._put("jobs", copy.deepcopy(job), "DELETED")

    def _delete_pods(self, ns: str, job: str) -> None:
        with self.lock:
            for pod in [o for (k, n, _), o in self.objects.items() if k == "pods" and n == ns
                        and o["metadata"]["labels"].get("batch.kubernetes.io/job-name") == job]:
                self._put("pods", copy.deepcopy(pod), "DELETED")

    def _delete_deployment_pods(self, ns: str, deployment: dict) -> None:
        selector = deployment["spec"]["selector"]["matchLabels"]
        with self.lock:
            for pod in [o for (k, n, _), o in self.objects.items() if k == "pods" and n == ns
                        and selector.items() <= o["metadata"]["labels"].items()]:
                self._put("pods", copy.deepcopy(pod), "DELETED")

    # -- a Deployment controller and kubelet, by script ------------------------------------------

    def _run_deployment(self, ns: str, name: str) -> None:
        deployment = self.get("deployments", ns, name)
        stage = deployment["metadata"]["labels"]["xwin.dev/stage"]
        script = self.deployment_scripts.get(stage, "ready")
        template = deployment["spec"]["template"]
        pod = self._put("pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{name}-7d9f8c6b5-{uuid.uuid4().hex[:5]}", "namespace": ns,
                         "labels": {**template["metadata"]["labels"], "pod-template-hash": "7d9f8c6b5"},
                         "uid": str(uuid.uuid4()), "creationTimestamp": now()},
            "spec": copy.deepcopy(template["spec"]),
            "status": {"phase": "Pending"},
        }, "ADDED")
        self._deployment_status(ns, name, replicas=1, unavailableReplicas=1)
        time.sleep(STEP_S)
        if script == "image_pull":
            self._pod_waiting(pod, "ImagePullBackOff",
                              f'Back-off pulling image "{template["spec"]["containers"][0]["image"]}"')
            self._event(pod, "Failed", "Failed to pull image: manifest unknown")
            return
        if script == "unschedulable":
            self._pod_condition(pod, "PodScheduled", "False", "Unschedulable",
                                "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
            return
        if script == "crash":
            def crash(p):
                p["status"]["phase"] = "Running"
                p["status"]["containerStatuses"] = [{
                    **container_status(pod, {"waiting": {"reason": "CrashLoopBackOff",
                                                         "message": "back-off 40s restarting"}}),
                    "restartCount": 3,
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                                 "startedAt": now(), "finishedAt": now()}}}]
            self._update_pod(pod, crash)
            return
        self._pod_phase(pod, "Running", running={"startedAt": now()})
        if script == "never":
            return
        time.sleep(self.deployment_ready_s)
        self._deployment_status(ns, name, readyReplicas=1, availableReplicas=1,
                                unavailableReplicas=None)

    def _deployment_status(self, ns: str, name: str, **fields) -> None:
        with self.lock:
            deployment = self.objects.get(("deployments", ns, name))
            if deployment is None:
                return
            deployment = copy.deepcopy(deployment)
            st = deployment.setdefault("status", {})
            st.update(fields)
            for key in [k for k, v in st.items() if v is None]:
                del st[key]
            self._put("deployments", deployment, "MODIFIED")

    # -- the scheduler: a kubelet and a Job controller, by script --------------------------------

    def _schedule(self, ns: str, name: str) -> None:
        job = self.get("jobs", ns, name)
        stage = job["metadata"]["labels"]["xwin.dev/stage"]
        script = self.scripts.get(stage, "succeed")
        n = job["spec"]["completions"]
        indexed = job["spec"].get("completionMode") == "Indexed"
        pods = [self._new_pod(job, i if indexed else None) for i in range(n)]
        self._job_status(ns, name, active=n, startTime=now())
        time.sleep(STEP_S)
        if script == "image_pull":
            for pod in pods:
                self._pod_waiting(pod, "ImagePullBackOff", f'Back-off pulling image "{job_image(job)}"')
                self._event(pod, "Failed", f'Failed to pull image "{job_image(job)}": not found')
            return
        if script == "unschedulable":
            for pod in pods:
                self._pod_condition(pod, "PodScheduled", "False", "Unschedulable",
                                    "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
            return
        for pod in pods:
            self._pod_phase(pod, "Running", running={"startedAt": now()})
        self._job_status(ns, name, active=n, ready=n)
        if script == "hang":
            return
        time.sleep(STEP_S)
        if not self._alive(ns, name):
            return
        if script in FAILURES:
            exit_code, reason, text = FAILURES[script]
            victim = pods[-1]
            self.logs[victim["metadata"]["name"]] = text
            self._pod_phase(victim, "Failed", terminated={
                "exitCode": exit_code, "reason": reason, "startedAt": now(), "finishedAt": now()})
            self._job_status(ns, name, active=0, failed=1, conditions=[
                condition("FailureTarget", "PodFailurePolicy", "pod failed"),
                condition("Failed", "PodFailurePolicy",
                          f"Container stage for pod {ns}/{victim['metadata']['name']} failed with "
                          f"exit code {exit_code} matching FailJob rule at index 0")])
            return
        for i, pod in enumerate(pods):
            self.logs[pod["metadata"]["name"]] = f"stage {stage} index {i}: done\n"
            self._pod_phase(pod, "Succeeded", terminated={
                "exitCode": 0, "reason": "Completed", "startedAt": now(), "finishedAt": now()})
        self._job_status(ns, name, active=0, ready=0, succeeded=n, completionTime=now(),
                         conditions=[condition("SuccessCriteriaMet", "CompletionsReached", ""),
                                     condition("Complete", "CompletionsReached", "")])

    def _alive(self, ns: str, name: str) -> bool:
        job = self.get("jobs", ns, name)
        return (job is not None and "deletionTimestamp" not in job["metadata"]
                and not job["spec"].get("suspend"))

    def _job_status(self, ns: str, name: str, **fields) -> None:
        with self.lock:
            job = self.objects.get(("jobs", ns, name))
            if job is None:
                return
            job = copy.deepcopy(job)
            job.setdefault("status", {}).update(fields)
            self._put("jobs", job, "MODIFIED")

    def _new_pod(self, job: dict, index: int | None) -> dict:
        template = job["spec"]["template"]
        name = f"{job['metadata']['name']}-{'' if index is None else f'{index}-'}{uuid.uuid4().hex[:5]}"
        labels = dict(template["metadata"].get("labels", {}))
        labels["batch.kubernetes.io/job-name"] = labels["job-name"] = job["metadata"]["name"]
        annotations = dict(template["metadata"].get("annotations", {}))
        if index is not None:
            annotations["batch.kubernetes.io/job-completion-index"] = str(index)
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": job["metadata"]["namespace"], "labels": labels,
                         "annotations": annotations, "uid": str(uuid.uuid4()),
                         "creationTimestamp": now()},
            "spec": copy.deepcopy(template["spec"]),
            "status": {"phase": "Pending"},
        }
        return self._put("pods", pod, "ADDED")

    def _update_pod(self, pod: dict, change) -> dict:
        with self.lock:
            key = ("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])
            current = self.objects.get(key)
            if current is None:
                return pod
            current = copy.deepcopy(current)
            change(current)
            return self._put("pods", current, "MODIFIED")

    def _pod_phase(self, pod: dict, phase: str, **state) -> None:
        def change(p):
            p["status"]["phase"] = phase
            p["status"]["containerStatuses"] = [container_status(pod, state)]
        self._update_pod(pod, change)

    def _pod_waiting(self, pod: dict, reason: str, message: str) -> None:
        def change(p):
            p["status"]["containerStatuses"] = [
                container_status(pod, {"waiting": {"reason": reason, "message": message}})]
        self._update_pod(pod, change)

    def _pod_condition(self, pod: dict, type_: str, status_: str, reason: str, message: str) -> None:
        def change(p):
            p["status"]["conditions"] = [{"type": type_, "status": status_, "reason": reason,
                                          "message": message, "lastTransitionTime": now()}]
        self._update_pod(pod, change)

    def _event(self, pod: dict, reason: str, message: str) -> None:
        ns = pod["metadata"]["namespace"]
        self._put("events", {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{pod['metadata']['name']}.{uuid.uuid4().hex[:8]}", "namespace": ns,
                         "creationTimestamp": now()},
            "involvedObject": {"kind": "Pod", "name": pod["metadata"]["name"], "namespace": ns},
            "type": "Warning", "reason": reason, "message": message, "lastTimestamp": now(),
        }, "ADDED")


def job_image(job: dict) -> str:
    return job["spec"]["template"]["spec"]["containers"][0]["image"]


def container_status(pod: dict, state: dict) -> dict:
    container = pod["spec"]["containers"][0]
    return {"name": container["name"], "image": container["image"], "imageID": "",
            "ready": "running" in state, "restartCount": 0, "state": state}


def condition(type_: str, reason: str, message: str) -> dict:
    return {"type": type_, "status": "True", "reason": reason, "message": message,
            "lastTransitionTime": now(), "lastProbeTime": now()}


def status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def merge_patch(target, patch):
    """RFC 7386: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = merge_patch(target.get(key), value)
    return target


def _matches(obj: dict, query: dict) -> bool:
    for part in filter(None, query.get("labelSelector", "").split(",")):
        key, _, value = part.partition("=")
        if obj["metadata"].get("labels", {}).get(key) != value:
            return False
    for part in filter(None, query.get("fieldSelector", "").split(",")):
        path, _, value = part.partition("=")
        node = obj
        for step in path.split("."):
            node = node.get(step, {}) if isinstance(node, dict) else {}
        if node != value:
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked watch streams
    api: FakeKubeAPI

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: dict | str) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self):
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.api.requests.append((self.command, url.path, query))
        self.api.headers.append(dict(self.headers))
        m = _ROUTE.match(url.path)
        if m is None:
            self._send(404, status(404, "NotFound", f"no route {url.path}"))
            return None
        return m, query

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def do_POST(self):
        if (routed := self._route()) is None:
            return
        m, _ = routed
        self._send(*self.api.create(m["kind"], m["ns"], self._body()))

    def do_PATCH(self):
        if (routed := self._route()) is None:
            return
        m, _ = routed
        body = self._body()
        if not isinstance(body, dict):  # a JSON patch (a list of operations): not served
            self._send(415, status(415, "UnsupportedMediaType", "only merge patches are served"))
            return
        self._send(*self.api.patch(m["kind"], m["ns"], m["name"], body))

    def do_DELETE(self):
        if (routed := self._route()) is None:
            return
        m, query = routed
        policy = self._body().get("propagationPolicy") or query.get("propagationPolicy")
        self._send(*self.api.delete(m["kind"], m["ns"], m["name"], policy))

    def do_GET(self):
        if (routed := self._route()) is None:
            return
        m, query = routed
        kind, ns, name = m["kind"], m["ns"], m["name"]
        if m["sub"] == "log":
            if self.api.get("pods", ns, name) is None:
                self._send(404, status(404, "NotFound", f'pods "{name}" not found'))
            elif name not in self.api.logs:
                self._send(400, status(400, "BadRequest",
                                       f'container "stage" in pod "{name}" is waiting to start'))
            else:
                self._send(200, self.api.logs[name])
            return
        if name:
            obj = self.api.get(kind, ns, name)
            self._send(200, obj) if obj else self._send(404, status(404, "NotFound", f"{name} not found"))
            return
        if query.get("watch") in ("true", "1"):
            self._watch(kind, ns, query)
            return
        with self.api.lock:
            items = [o for o in self.api.list(kind, ns) if _matches(o, query)]
            rv = str(self.api.rv)
        kind_name, api_version = _KIND[kind]
        self._send(200, {"kind": f"{kind_name}List", "apiVersion": api_version,
                         "metadata": {"resourceVersion": rv}, "items": items})

    def _chunk(self, event: dict) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, kind: str, ns: str, query: dict) -> None:
        api = self.api
        since = int(query.get("resourceVersion") or api.rv)
        deadline = time.monotonic() + float(query.get("timeoutSeconds", 30))
        with api.lock:
            expired = since < api.oldest_rv
            if not expired:
                drop_after, api._drop_after = api._drop_after, None
            epoch = api.watch_epoch
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if expired:
            self._chunk({"type": "ERROR", "object": status(
                410, "Expired", f"too old resource version: {since} ({api.oldest_rv})")})
            self.wfile.write(b"0\r\n\r\n")
            return
        sent = 0
        bookmark = None
        while not api.stopped.is_set():
            with api.lock:
                if api.watch_epoch != epoch:
                    return self._break()
                pending = [(rv, t, o) for rv, k, t, o in api.history
                           if rv > since and k == kind and o["metadata"]["namespace"] == ns
                           and _matches(o, query)]
                if not pending:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        bookmark = api.rv  # everything up to here that matches was sent
                        break
                    api.lock.wait(min(left, 0.2))
                    continue
            for rv, event_type, obj in pending:
                self._chunk({"type": event_type, "object": obj})
                since = rv
                sent += 1
                if drop_after is not None and sent >= drop_after:
                    return self._break()
        if bookmark is not None and query.get("allowWatchBookmarks") in ("true", "1"):
            kind_name, api_version = _KIND[kind]
            self._chunk({"type": "BOOKMARK", "object": {
                "kind": kind_name, "apiVersion": api_version,
                "metadata": {"resourceVersion": str(bookmark)}}})
        self.wfile.write(b"0\r\n\r\n")

    def _break(self) -> None:
        """End the connection mid-stream, with no terminating chunk."""
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)
