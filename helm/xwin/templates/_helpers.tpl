{{- define "xwin.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "xwin.labels" -}}
app.kubernetes.io/name: xwin
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "xwin.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{- define "xwin.serviceAccount" -}}
{{- default (printf "%s-controller" (include "xwin.fullname" .)) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "xwin.stageServiceAccount" -}}
{{- printf "%s-stage" (include "xwin.fullname" .) -}}
{{- end -}}

{{/* The Secret with the store's credentials: the chart's own with MinIO, else the user's. */}}
{{- define "xwin.s3Secret" -}}
{{- if .Values.minio.enabled -}}
{{- printf "%s-minio" (include "xwin.fullname" .) -}}
{{- else -}}
{{- required "s3.existingSecret: name the Secret holding AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" .Values.s3.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "xwin.s3Endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "http://%s-minio.%s.svc:9000" (include "xwin.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.s3.endpoint -}}
{{- end -}}
{{- end -}}

{{/* The restricted Pod Security Standard, for every pod of the chart. */}}
{{- define "xwin.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.stagePods.runAsUser }}
runAsGroup: {{ .Values.stagePods.runAsUser }}
fsGroup: {{ .Values.stagePods.runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "xwin.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "xwin.s3Env" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ include "xwin.s3Secret" . }}, key: AWS_ACCESS_KEY_ID}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "xwin.s3Secret" . }}, key: AWS_SECRET_ACCESS_KEY}
{{- end -}}

{{/* The pipeline config the controller runs: the user's sections plus store and executor. */}}
{{- define "xwin.pipelineConfig" -}}
{{- $cfg := deepCopy (default dict .Values.pipeline) -}}
{{- range $section := list "store" "executor" -}}
{{- if hasKey $cfg $section -}}
{{- fail (printf "pipeline.%s is set by the chart: use the s3, profiles, images and stagePods values" $section) -}}
{{- end -}}
{{- end -}}
{{- range $name, $section := $cfg -}}
{{- if kindIs "map" $section -}}
{{- if or (hasKey $section "false") (hasKey $section "true") -}}
{{- fail (printf "pipeline.%s: a key reads as true/false: YAML 1.1 (helm) takes an unquoted n, y, yes, no, on or off for a boolean; quote it, e.g. \"n\": 64" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $store := dict "kind" "s3" "bucket" .Values.s3.bucket "prefix" .Values.s3.prefix -}}
{{- with include "xwin.s3Endpoint" . }}{{ $_ := set $store "endpoint_url" . }}{{ end -}}
{{- with .Values.s3.region }}{{ $_ := set $store "region" . }}{{ end -}}
{{- /* each stage runs the image its row in xwin/stages/registry.py names (trainer or sampler) */ -}}
{{- $images := dict "trainer" (include "xwin.image" .Values.images.trainer)
      "sampler" (include "xwin.image" .Values.images.sampler) -}}
{{- $pullSecrets := list -}}
{{- range .Values.images.pullSecrets }}{{ $pullSecrets = append $pullSecrets .name }}{{ end -}}
{{- $kube := dict
      "s3_secret" (include "xwin.s3Secret" .)
      "service_account" (include "xwin.stageServiceAccount" .)
      "image_pull_policy" .Values.images.pullPolicy
      "image_pull_secrets" $pullSecrets
      "run_as_user" .Values.stagePods.runAsUser
      "read_only_root_filesystem" .Values.stagePods.readOnlyRootFilesystem
      "image_pull_grace_s" .Values.stagePods.imagePullGraceSeconds
      "unschedulable_timeout_s" .Values.stagePods.unschedulableTimeoutSeconds
      "labels" (dict "app.kubernetes.io/instance" .Release.Name) -}}
{{- with .Values.stagePods.workVolumeSize }}{{ $_ := set $kube "work_volume_size" . }}{{ end -}}
{{- with .Values.kueue.queue }}{{ $_ := set $kube "queue" . }}{{ end -}}
{{- with .Values.kueue.priorityClass }}{{ $_ := set $kube "priority_class" . }}{{ end -}}
{{- $executor := dict "kind" "kubernetes" "namespace" .Release.Namespace
      "profiles_dir" "/opt/xwin/jobs" "profiles" (deepCopy .Values.profiles) "images" $images
      "kubernetes" $kube -}}
{{- $_ := set $cfg "store" $store -}}
{{- $_ := set $cfg "executor" $executor -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* The run id: the release name and the pipeline config's digest. A replaced controller pod
(the same config) continues the same run; a changed config is a new run, which reuses the
finished stages whose keys still match. */}}
{{- define "xwin.runId" -}}
{{- .Values.controller.runId | default (printf "%s-%s" .Release.Name (include "xwin.pipelineConfig" . | sha256sum | trunc 8)) -}}
{{- end }}
