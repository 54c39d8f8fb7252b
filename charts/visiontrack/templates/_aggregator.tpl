{{/*
The Deployment of an aggregator process (the Celery worker or beat), from the aggregator image,
started through vt-entrypoint once the schema is there (init container wait-for-schema). VT_METRICS_PORT
(port "metrics") serves /metrics, /healthz (startup and liveness: the process serves) and /readyz
(readiness: its dependencies answer), which the probes use.
Call with (dict "ctx" $ "component" "worker" "args" (list ...)).
*/}}
{{- define "visiontrack.aggregatorDeployment" -}}
{{- $ := .ctx -}}
{{- $c := index $.Values .component -}}
{{- $ctx := dict "ctx" $ "component" .component -}}
{{- $isBeat := eq .component "beat" -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "visiontrack.componentName" $ctx }}
  labels:
    {{- include "visiontrack.labels" $ctx | nindent 4 }}
spec:
  {{- if $isBeat }}
  # Exactly one beat, and the old one is gone before the new one starts.
  replicas: 1
  strategy:
    type: Recreate
  {{- else if not $c.autoscaling.enabled }}
  replicas: {{ $c.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "visiontrack.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "visiontrack.labels" $ctx | nindent 8 }}
        {{- with $c.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- include "visiontrack.podAnnotations" (dict "ctx" $ "values" $c) | nindent 8 }}
    spec:
      serviceAccountName: {{ include "visiontrack.serviceAccountName" $ }}
      automountServiceAccountToken: false
      {{- with $c.terminationGracePeriodSeconds }}
      terminationGracePeriodSeconds: {{ . }}
      {{- end }}
      {{- with $.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "visiontrack.podSecurityContext" $ | nindent 8 }}
      {{- with (include "visiontrack.scheduling" $c | trim) }}{{ . | nindent 6 }}{{ end }}
      {{- if $.Values.migrate.waitForSchema.enabled }}
      {{- /* beat reads no table itself; it waits too, so it schedules none of this image's tasks before their schema. */}}
      initContainers:
        {{- include "visiontrack.waitForSchema" (dict "ctx" $ "image" "aggregator" "values" $c) | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "visiontrack.image" (dict "ctx" $ "image" "aggregator") }}
          imagePullPolicy: {{ $.Values.imageDefaults.pullPolicy }}
          command: ["vt-entrypoint"]
          args:
            {{- toYaml .args | nindent 12 }}
          ports:
            - name: metrics
              containerPort: {{ $c.metricsPort }}
              protocol: TCP
          envFrom:
            - configMapRef:
                name: {{ include "visiontrack.configName" $ }}
          env:
            - name: VT_METRICS_PORT
              value: {{ $c.metricsPort | quote }}
            {{- if $isBeat }}
            - name: VT_BEAT_SCHEDULE_FILE
              value: {{ $c.scheduleFile | quote }}
            {{- else }}
            {{- /* The worker's prefork children share their metrics through files; beat is one process. */}}
            - name: PROMETHEUS_MULTIPROC_DIR
              value: {{ $.Values.prometheusMultiprocDir | quote }}
            {{- end }}
            {{- include "visiontrack.secretEnv" (dict "ctx" $ "keys" (list "DATABASE_URL" "REDIS_URL")) | trim | nindent 12 }}
            {{- include "visiontrack.optionalSecretEnv" (dict "ctx" $ "keys" (list "VT_BROKER_URL")) | trim | nindent 12 }}
            {{- with $c.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- include "visiontrack.httpProbes" (dict "probes" $c.probes "port" "metrics") | nindent 10 }}
          resources:
            {{- toYaml $c.resources | nindent 12 }}
          securityContext:
            {{- include "visiontrack.containerSecurityContext" $ | nindent 12 }}
          volumeMounts:
            {{- if $isBeat }}
            - name: tmp
              mountPath: /tmp
            {{- else }}
            {{- include "visiontrack.pythonVolumeMounts" $ | nindent 12 }}
            {{- end }}
      volumes:
        {{- if $isBeat }}
        - name: tmp
          emptyDir:
            sizeLimit: {{ $.Values.tmpSizeLimit }}
        {{- else }}
        {{- include "visiontrack.pythonVolumes" $ | nindent 8 }}
        {{- end }}
{{- end -}}
