{{- define "eirinix.name" -}}{{ .Release.Name | trunc 40 | trimSuffix "-" }}{{- end -}}
{{- define "eirinix.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
{{- define "eirinix.labels" -}}
app.kubernetes.io/name: eirinix
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "eirinix.selector" -}}
app.kubernetes.io/name: eirinix
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}
{{/* Enabled extensions served by the webhook process, comma-separated. */}}
{{- define "eirinix.extensions" -}}
{{- $out := list -}}
{{- range $name := list "persi" "ssh" "logs" "rootfs" -}}
{{- if (index $.Values.extensions $name).enabled -}}{{- $out = append $out $name -}}{{- end -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}
{{/* Flags shared by run, register and unregister: the registered configuration is derived from them. */}}
{{- define "eirinix.commonArgs" -}}
- --extensions={{ include "eirinix.extensions" . }}
- --fingerprint={{ .Values.fingerprint }}
- --namespace={{ .Values.appNamespace }}
- --service-name={{ include "eirinix.name" . }}-webhook
- --service-port={{ .Values.webhook.servicePort }}
- --webhook-namespace={{ .Release.Namespace }}
- --port={{ .Values.webhook.port }}
- --failure-policy={{ .Values.webhook.failurePolicy | lower }}
- --timeout-seconds={{ .Values.webhook.timeoutSeconds }}
{{- if .Values.webhook.interceptUpdate }}
- --intercept-update
{{- end }}
- --excluded-namespaces={{ join "," (concat (list "kube-system" .Release.Namespace) .Values.webhook.excludedNamespaces | uniq) }}
- --log-format={{ .Values.logFormat }}
{{- with .Values.extensions.persi }}{{ if .enabled }}
- --persi-failure-policy={{ .failurePolicy | lower }}
- --persi-fs-group={{ .fsGroup }}
{{- end }}{{ end }}
{{- with .Values.extensions.ssh }}{{ if .enabled }}
- --ssh-failure-policy={{ .failurePolicy | lower }}
- --ssh-port={{ .port }}
- --ssh-image={{ include "eirinix.image" $ }}
- --ssh-master-secret={{ $.Values.fingerprint }}-ssh-master
- --ssh-no-create-master-secret
{{- if .sidecarFallback }}
- --ssh-sidecar-fallback
{{- end }}
{{- end }}{{ end }}
{{- with .Values.extensions.rootfs }}{{ if .enabled }}
{{- if .version }}
- --rootfs-version={{ .version }}
{{- end }}
{{- if .imagePattern }}
- --rootfs-image-pattern={{ .imagePattern }}
{{- end }}
- --rootfs-max-in-flight={{ .maxInFlight }}
- --rootfs-config-map={{ $.Release.Namespace }}/{{ $.Values.fingerprint }}-rootfs
{{- end }}{{ end }}
{{- end -}}
{{- define "eirinix.podSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- define "eirinix.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}
