{{/*
The Deployment of a Flask API (registry or query): gunicorn with the shared config module, started
through vt-entrypoint (which empties the Prometheus multiprocess directory first), once the schema is
there (init container wait-for-schema).
Call with (dict "ctx" $ "component" "registry" "app" "registry.app:create_app()").
*/}}
{{- define "visiontrack.webDeployment" -}}
{{- $ := .ctx -}}
{{- $c := index $.Values .component -}}
{{- $ctx := dict "ctx" $ "component" .component -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "visiontrack.componentName" $ctx }}
  labels:
    {{- include "visiontrack.labels" $ctx | nindent 4 }}
spec:
  {{- if not (and $c.autoscaling $c.autoscaling.enabled) }}
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
      {{- with $.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "visiontrack.podSecurityContext" $ | nindent 8 }}
      {{- with (include "visiontrack.scheduling" $c | trim) }}{{ . | nindent 6 }}{{ end }}
      {{- if $.Values.migrate.waitForSchema.enabled }}
      initContainers:
        {{- include "visiontrack.waitForSchema" (dict "ctx" $ "image" .component "values" $c) | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "visiontrack.image" (dict "ctx" $ "image" .component) }}
          imagePullPolicy: {{ $.Values.imageDefaults.pullPolicy }}
          command: ["vt-entrypoint"]
          args: ["gunicorn", "--config", "python:visiontrack.web.gunicorn_conf", {{ .app | quote }}]
          ports:
            - name: http
              containerPort: {{ $c.containerPort }}
              protocol: TCP
          envFrom:
            - configMapRef:
                name: {{ include "visiontrack.configName" $ }}
          env:
            - name: VT_HTTP_BIND
              value: "0.0.0.0:{{ $c.containerPort }}"
            - name: PROMETHEUS_MULTIPROC_DIR
              value: {{ $.Values.prometheusMultiprocDir | quote }}
            {{- include "visiontrack.secretEnv" (dict "ctx" $ "keys" (list "DATABASE_URL" "REDIS_URL" "VT_ADMIN_TOKENS" "VT_READER_TOKENS")) | trim | nindent 12 }}
            {{- if eq $ctx.component "query" }}
            {{- include "visiontrack.optionalSecretEnv" (dict "ctx" $ "keys" (list "VT_DATABASE_READ_URL")) | trim | nindent 12 }}
            {{- end }}
            {{- with $c.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- include "visiontrack.httpProbes" (dict "probes" $c.probes "port" "http") | nindent 10 }}
          {{- with $c.preStopSleepSeconds }}
          lifecycle:
            preStop:
              sleep:
                seconds: {{ . }}
          {{- end }}
          resources:
            {{- toYaml $c.resources | nindent 12 }}
          securityContext:
            {{- include "visiontrack.containerSecurityContext" $ | nindent 12 }}
          volumeMounts:
            {{- include "visiontrack.pythonVolumeMounts" $ | nindent 12 }}
      volumes:
        {{- include "visiontrack.pythonVolumes" $ | nindent 8 }}
{{- end -}}
