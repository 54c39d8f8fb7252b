{{/*
Helpers shared by every template. Names are cut at 63 characters (the DNS label limit).
One name per part everywhere: ingestor, registry, query, aggregator (components worker and beat),
migrate, postgres, redis.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "visiontrack.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release-scoped prefix of every object name: fullnameOverride, else the release name when it already
holds the chart name, else "<release>-<chart>".
*/}}
{{- define "visiontrack.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The name of one component's objects: "<fullname>-<component>". Call with (dict "ctx" $ "component" "query"). */}}
{{- define "visiontrack.componentName" -}}
{{- printf "%s-%s" (include "visiontrack.fullname" .ctx | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component -}}
{{- end -}}

{{/* "name-version" of the chart, for the helm.sh/chart label. */}}
{{- define "visiontrack.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The part a component belongs to, for app.kubernetes.io/name: worker and beat are the aggregator,
everything else is its own part.
*/}}
{{- define "visiontrack.partOf" -}}
{{- if has . (list "worker" "beat") -}}aggregator{{- else -}}{{ . }}{{- end -}}
{{- end -}}

{{/* Labels that select one component's pods; never change them on upgrade. (dict "ctx" $ "component" "query") */}}
{{- define "visiontrack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "visiontrack.partOf" .component }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every label of a component's objects: the selector labels plus the standard descriptive ones. */}}
{{- define "visiontrack.labels" -}}
{{ include "visiontrack.selectorLabels" . }}
app.kubernetes.io/part-of: {{ include "visiontrack.name" .ctx }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ include "visiontrack.chart" .ctx }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of release-wide objects (ConfigMap, Secret, ServiceAccount). */}}
{{- define "visiontrack.commonLabels" -}}
{{ include "visiontrack.labels" (dict "ctx" . "component" "config") }}
{{- end -}}

{{/*
The image reference of one VisionTrack image: [registry/]repository(:tag|@digest). The tag defaults to
the chart's appVersion. (dict "ctx" $ "image" "aggregator")
*/}}
{{- define "visiontrack.image" -}}
{{- $img := index .ctx.Values.images .image -}}
{{- $registry := .ctx.Values.imageDefaults.registry -}}
{{- $repo := ternary (printf "%s/%s" $registry $img.repository) $img.repository (ne $registry "") -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default (default .ctx.Chart.AppVersion .ctx.Values.imageDefaults.tag) $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* The ServiceAccount every VisionTrack pod runs as. */}}
{{- define "visiontrack.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "visiontrack.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret that holds DATABASE_URL, REDIS_URL, the API tokens and the in-chart database passwords. */}}
{{/*
The release Secret's generated values as JSON: postgresPassword, redisPassword, adminTokens. A value set
in values.yaml wins; else the live Secret's (lookup, on upgrade); else a random one. Computed once per
render and kept in .Values, so the Secret, its checksum in every pod template and the Grafana data source
all see the same values: the first upgrade after an install then changes no pod template.
*/}}
{{- define "visiontrack.generatedSecrets" -}}
{{- if not (hasKey .Values "_generatedSecrets") }}
{{- $live := (lookup "v1" "Secret" .Release.Namespace (include "visiontrack.secretName" .)).data | default dict }}
{{- $_ := set .Values "_generatedSecrets" (dict
  "postgresPassword" (.Values.postgres.password | default (get $live "POSTGRES_PASSWORD" | b64dec) | default (randAlphaNum 32))
  "redisPassword" (.Values.redis.password | default (get $live "REDIS_PASSWORD" | b64dec) | default (randAlphaNum 32))
  "adminTokens" (.Values.secrets.adminTokens | default (get $live "VT_ADMIN_TOKENS" | b64dec) | default (printf "vta_%s" (randAlphaNum 40)))) }}
{{- end }}
{{- get .Values "_generatedSecrets" | toJson }}
{{- end -}}

{{- define "visiontrack.secretName" -}}
{{- default (include "visiontrack.componentName" (dict "ctx" . "component" "secrets")) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The ConfigMap of the shared, non-secret VT_ settings. */}}
{{- define "visiontrack.configName" -}}
{{- include "visiontrack.componentName" (dict "ctx" . "component" "config") -}}
{{- end -}}

{{/* Pod-level security context: non-root, fixed ids, RuntimeDefault seccomp. */}}
{{- define "visiontrack.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end -}}

{{/* Container-level security context: read-only root filesystem, no privilege escalation, no capabilities. */}}
{{- define "visiontrack.containerSecurityContext" -}}
{{ toYaml .Values.containerSecurityContext }}
{{- end -}}

{{/*
Environment entries that read keys of the release Secret. (dict "ctx" $ "keys" (list "DATABASE_URL"))
The key names are the variable names, also in an existingSecret.
*/}}
{{- define "visiontrack.secretEnv" -}}
{{- $secret := include "visiontrack.secretName" .ctx -}}
{{- range .keys }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ . }}
{{- end }}
{{- end -}}

{{/*
Environment entries that read keys of the release Secret only when it has them (optional: true): the
settings of an external Postgres or Redis that only some deployments use. (dict "ctx" $ "keys" (list ...))
*/}}
{{- define "visiontrack.optionalSecretEnv" -}}
{{- $secret := include "visiontrack.secretName" .ctx -}}
{{- range .keys }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ . }}
      optional: true
{{- end }}
{{- end -}}

{{/* Whether the shared settings put the stream on a Redis Cluster. */}}
{{- define "visiontrack.redisCluster" -}}
{{- if eq (toString (.Values.config.VT_REDIS_CLUSTER | default "false")) "true" }}true{{ end -}}
{{- end -}}

{{/*
The writable directories of a Python container (the root filesystem is read-only): /tmp, and the
Prometheus multiprocess directory inside it.
*/}}
{{- define "visiontrack.pythonVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: metrics
  mountPath: {{ .Values.prometheusMultiprocDir }}
{{- end -}}

{{- define "visiontrack.pythonVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
- name: metrics
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{/*
Pod template annotations: checksums of the ConfigMap and Secret, so a changed setting rolls the pods,
plus the component's own podAnnotations. (dict "ctx" $ "values" .Values.query)
*/}}
{{- define "visiontrack.podAnnotations" -}}
checksum/config: {{ include (print .ctx.Template.BasePath "/configmap.yaml") .ctx | sha256sum }}
checksum/secret: {{ include (print .ctx.Template.BasePath "/secret.yaml") .ctx | sha256sum }}
{{- with .values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Scheduling fields shared by every component: nodeSelector, tolerations, affinity,
topologySpreadConstraints, priorityClassName. (the component's values)
*/}}
{{- define "visiontrack.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* An HTTP probe block from the component's probe values, on the named port. (dict "probe" .Values.query.probes.readiness "port" "http") */}}
{{- define "visiontrack.httpProbe" -}}
httpGet:
  path: {{ .probe.path }}
  port: {{ .port }}
{{- with (omit .probe "path") }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The three probes of an HTTP component: startup, readiness and liveness. (dict "probes" .Values.query.probes "port" "http") */}}
{{- define "visiontrack.httpProbes" -}}
startupProbe:
  {{- include "visiontrack.httpProbe" (dict "probe" .probes.startup "port" .port) | nindent 2 }}
readinessProbe:
  {{- include "visiontrack.httpProbe" (dict "probe" .probes.readiness "port" .port) | nindent 2 }}
livenessProbe:
  {{- include "visiontrack.httpProbe" (dict "probe" .probes.liveness "port" .port) | nindent 2 }}
{{- end -}}

{{/*
The migration Job's name: "<fullname>-migrate-<revision>". A Job's pod template cannot change, so each
install, upgrade and rollback creates its own Job; Helm deletes the previous revision's.
*/}}
{{- define "visiontrack.migrateJobName" -}}
{{- include "visiontrack.componentName" (dict "ctx" . "component" (printf "migrate-%d" (int .Release.Revision))) -}}
{{- end -}}

{{/*
The init container of every pod whose part uses Postgres (registry, query, worker, beat): `visiontrack
wait-for-schema` from the pod's own image, so the part starts only once the migrations it ships are
applied (the migration Job runs beside the pods). Settings as the part's own container gets them.
(dict "ctx" $ "image" "registry" "values" .Values.registry)
*/}}
{{- define "visiontrack.waitForSchema" -}}
{{- $w := .ctx.Values.migrate.waitForSchema -}}
- name: wait-for-schema
  image: {{ include "visiontrack.image" (dict "ctx" .ctx "image" .image) }}
  imagePullPolicy: {{ .ctx.Values.imageDefaults.pullPolicy }}
  command: ["vt-entrypoint"]
  args: ["visiontrack", "wait-for-schema", "--timeout", {{ $w.timeoutSeconds | quote }}]
  envFrom:
    - configMapRef:
        name: {{ include "visiontrack.configName" .ctx }}
  env:
    {{- include "visiontrack.secretEnv" (dict "ctx" .ctx "keys" (list "DATABASE_URL")) | trim | nindent 4 }}
    {{- with .values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  resources:
    {{- toYaml $w.resources | nindent 4 }}
  securityContext:
    {{- include "visiontrack.containerSecurityContext" .ctx | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end -}}

{{/* Fail early, with a readable message, on combinations of values that cannot work. */}}
{{- define "visiontrack.validateValues" -}}
{{- if and (not .Values.postgres.enabled) (not .Values.externalDatabase.url) (not .Values.secrets.existingSecret) -}}
{{- fail "postgres.enabled=false needs externalDatabase.url, or secrets.existingSecret holding DATABASE_URL" -}}
{{- end -}}
{{- if and (not .Values.redis.enabled) (not .Values.externalRedis.url) (not .Values.secrets.existingSecret) -}}
{{- fail "redis.enabled=false needs externalRedis.url, or secrets.existingSecret holding REDIS_URL" -}}
{{- end -}}
{{- if and (include "visiontrack.redisCluster" .) .Values.redis.enabled -}}
{{- fail "config.VT_REDIS_CLUSTER=true needs an external Redis Cluster (redis.enabled=false, externalRedis.url)" -}}
{{- end -}}
{{- if and (include "visiontrack.redisCluster" .) (not .Values.externalRedis.brokerUrl) (not .Values.secrets.existingSecret) -}}
{{- fail "config.VT_REDIS_CLUSTER=true needs externalRedis.brokerUrl (a plain Redis for Celery's broker), or secrets.existingSecret holding VT_BROKER_URL" -}}
{{- end -}}
{{- if ne (int .Values.beat.replicaCount) 1 -}}
{{- fail "beat.replicaCount must be 1: a second Celery beat would run every periodic task twice" -}}
{{- end -}}
{{- if and .Values.ingress.enabled .Values.ingress.tls.enabled (not .Values.ingress.host) -}}
{{- fail "ingress.tls.enabled needs ingress.host (the certificate's name)" -}}
{{- end -}}
{{- if and .Values.httpRoute.enabled (not .Values.httpRoute.parentRefs) -}}
{{- fail "httpRoute.enabled needs httpRoute.parentRefs (the Gateway to attach to)" -}}
{{- end -}}
{{- end -}}

{{/*
Observability hooks for the ServiceMonitors, PrometheusRule and dashboards.
"visiontrack.monitoring" is "true" when monitoring is on and the cluster serves the Prometheus
Operator's API (render with --api-versions monitoring.coreos.com/v1 to see them offline).
"visiontrack.metricsPort" names the port a component serves /metrics on.
*/}}
{{- define "visiontrack.monitoring" -}}
{{- if and .Values.monitoring.enabled (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") -}}true{{- end -}}
{{- end -}}

{{- define "visiontrack.metricsPort" -}}
{{- if has . (list "worker" "beat") -}}metrics{{- else -}}http{{- end -}}
{{- end -}}
