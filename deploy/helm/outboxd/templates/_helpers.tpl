{{- define "outboxd.name" -}}{{ .Chart.Name }}{{- end -}}
{{- define "outboxd.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}
{{- define "outboxd.labels" -}}
app.kubernetes.io/name: {{ include "outboxd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "outboxd.selector" -}}
app.kubernetes.io/name: {{ include "outboxd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "outboxd.secretName" -}}
{{- if .Values.secrets.create -}}{{ include "outboxd.fullname" . }}{{- else -}}{{ required "secrets.existingSecret is required when secrets.create is false" .Values.secrets.existingSecret }}{{- end -}}
{{- end -}}
{{- define "outboxd.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}

{{/* The environment every outboxd container gets (the Job's too). */}}
{{- define "outboxd.env" -}}
{{- range $k, $v := .Values.config }}
{{- if ne (toString $v) "" }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end }}
{{- range $k, $v := .Values.extraEnv }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
- name: DATABASE_URL
  valueFrom: {secretKeyRef: {name: {{ include "outboxd.secretName" . }}, key: DATABASE_URL}}
- name: LISTEN_DATABASE_URL
  valueFrom: {secretKeyRef: {name: {{ include "outboxd.secretName" . }}, key: LISTEN_DATABASE_URL, optional: true}}
- name: READ_DATABASE_URL
  valueFrom: {secretKeyRef: {name: {{ include "outboxd.secretName" . }}, key: READ_DATABASE_URL, optional: true}}
- name: SECRET_KEY
  valueFrom: {secretKeyRef: {name: {{ include "outboxd.secretName" . }}, key: SECRET_KEY, optional: true}}
- name: ADMIN_TOKEN
  valueFrom: {secretKeyRef: {name: {{ include "outboxd.secretName" . }}, key: ADMIN_TOKEN, optional: true}}
{{- end -}}

{{/* The outboxd container, in its own Deployment or beside the app. */}}
{{- define "outboxd.container" -}}
- name: outboxd
  image: {{ include "outboxd.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  env:
    {{- include "outboxd.env" . | nindent 4 }}
    - name: LISTEN_ADDR
      value: ":{{ .Values.service.port }}"
    - name: ADMIN_ADDR
      value: ":{{ .Values.admin.port }}"
    - name: AUTO_MIGRATE
      value: {{ ternary "false" "true" .Values.migrations.job | quote }}
  ports:
    - {name: http, containerPort: {{ .Values.service.port }}, protocol: TCP}
    - {name: admin, containerPort: {{ .Values.admin.port }}, protocol: TCP}
  startupProbe:
    httpGet: {path: {{ .Values.probes.startup.path }}, port: admin}
    periodSeconds: {{ .Values.probes.startup.periodSeconds }}
    failureThreshold: {{ .Values.probes.startup.failureThreshold }}
  livenessProbe:
    httpGet: {path: {{ .Values.probes.liveness.path }}, port: admin}
    periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
    failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
  readinessProbe:
    httpGet: {path: {{ .Values.probes.readiness.path }}, port: admin}
    periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
    failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
  lifecycle:
    preStop:
      sleep: {seconds: {{ .Values.preStopSleepSeconds }}}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
{{- end -}}
