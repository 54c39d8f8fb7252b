{{/*
The public routes of API.md, one list for the Ingress and the HTTPRoute: path prefix -> component.
Each component's Service port "http" reaches the container that serves the prefix.
*/}}
{{- define "visiontrack.routes" -}}
- path: /api/ingest
  component: ingestor
- path: /api/devices
  component: registry
- path: /api/alert-rules
  component: registry
- path: /api/telemetry
  component: query
- path: /api/alerts
  component: query
{{- end -}}
