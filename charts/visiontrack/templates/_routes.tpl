{{/*
The public routes, path prefix -> component: files/routes.json, the one list the Ingress, the HTTPRoute and the
local stack's nginx (stack/nginx.py) route by. Each component's Service port "http" reaches the container that
serves the prefix.
*/}}
{{- define "visiontrack.routes" -}}
{{ .Files.Get "files/routes.json" | fromJsonArray | toYaml }}
{{- end -}}
