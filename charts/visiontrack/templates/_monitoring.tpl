{{/*
Monitoring helpers: the Redis and Postgres exporters run as sidecars of the in-chart StatefulSets (they
reach their database on localhost, so no extra NetworkPolicy egress is needed); their "metrics" port is
on the database's Service and is scraped through a ServiceMonitor like the parts'.
*/}}

{{/* "true" when the sidecar exporter of db ("redis" or "postgres") runs. (dict "ctx" $ "db" "redis") */}}
{{- define "visiontrack.exporterEnabled" -}}
{{- $v := .ctx.Values -}}
{{- if and $v.monitoring.enabled (index $v .db).enabled (index $v.monitoring.exporters .db).enabled -}}true{{- end -}}
{{- end -}}

{{/* The exporter sidecar container of db. (dict "ctx" $ "db" "redis") */}}
{{- define "visiontrack.exporterContainer" -}}
{{- $ctx := .ctx -}}
{{- $e := index $ctx.Values.monitoring.exporters .db -}}
{{- $secret := include "visiontrack.secretName" $ctx -}}
- name: {{ .db }}-exporter
  image: "{{ $e.image.repository }}:{{ $e.image.tag }}"
  imagePullPolicy: {{ $e.image.pullPolicy }}
  {{- if eq .db "redis" }}
  args: ["-web.listen-address", ":{{ $e.port }}"]
  {{- else }}
  args: ["--web.listen-address=:{{ $e.port }}"]
  {{- end }}
  ports:
    - name: metrics
      containerPort: {{ $e.port }}
      protocol: TCP
  env:
    {{- if eq .db "redis" }}
    - name: REDIS_ADDR
      value: redis://127.0.0.1:6379
    # The telemetry streams' length and groups (redis_stream_*), besides the server's own metrics.
    - name: REDIS_EXPORTER_CHECK_STREAMS
      value: {{ printf "%s*" (index $ctx.Values.config "VT_STREAM_KEY" | default "vt:telemetry") | quote }}
    - name: REDIS_PASSWORD
      valueFrom:
        secretKeyRef:
          name: {{ $secret }}
          key: REDIS_PASSWORD
    {{- else }}
    - name: DATA_SOURCE_URI
      value: {{ printf "127.0.0.1:5432/%s?sslmode=disable" $ctx.Values.postgres.database | quote }}
    - name: DATA_SOURCE_USER
      value: {{ $ctx.Values.postgres.username | quote }}
    - name: DATA_SOURCE_PASS
      valueFrom:
        secretKeyRef:
          name: {{ $secret }}
          key: POSTGRES_PASSWORD
    {{- end }}
  {{- $probe := dict "tcpSocket" (dict "port" "metrics") }}
  startupProbe:
    {{- toYaml $probe | nindent 4 }}
    periodSeconds: 2
    failureThreshold: 30
  readinessProbe:
    {{- toYaml $probe | nindent 4 }}
    periodSeconds: 10
  livenessProbe:
    {{- toYaml $probe | nindent 4 }}
    periodSeconds: 20
    failureThreshold: 6
  resources:
    {{- toYaml $e.resources | nindent 4 }}
  securityContext:
    {{- include "visiontrack.containerSecurityContext" $ctx | nindent 4 }}
{{- end -}}

{{/* The exporter's port on the database's Service. (dict "ctx" $ "db" "redis") */}}
{{- define "visiontrack.exporterServicePort" -}}
- name: metrics
  port: {{ (index .ctx.Values.monitoring.exporters .db).port }}
  targetPort: metrics
  protocol: TCP
{{- end -}}

{{/* NetworkPolicy ingress of the exporter's port: Prometheus (networkPolicy.metricsFrom). */}}
{{- define "visiontrack.exporterIngress" -}}
{{- with .ctx.Values.networkPolicy.metricsFrom }}
- from:
    {{- toYaml . | nindent 4 }}
  ports:
    - port: metrics
      protocol: TCP
{{- end }}
{{- end -}}

{{/*
The rules file with the `for` of the alerts named in (dict "rules" <text> "for" <alert: duration>);
an alert name the file does not have fails the render (a typo would otherwise change nothing).
*/}}
{{- define "visiontrack.rulesWithFor" -}}
{{- $doc := fromYaml .rules }}
{{- $known := list }}
{{- range $group := $doc.groups }}
{{- range $rule := $group.rules }}
{{- with $rule.alert }}
{{- $known = append $known . }}
{{- if hasKey $.for . }}{{ $_ := set $rule "for" (get $.for .) }}{{ end }}
{{- end }}
{{- end }}
{{- end }}
{{- range $name, $_ := .for }}
{{- if not (has $name $known) }}
{{- fail (printf "monitoring.rules.for: no alert is named %s (the alerts: %s)" $name (join ", " $known)) }}
{{- end }}
{{- end }}
{{- toYaml $doc }}
{{- end -}}
