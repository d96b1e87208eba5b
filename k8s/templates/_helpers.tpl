{{/* Names ---------------------------------------------------------------------------- */}}
{{- define "dyref.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dyref.rayCluster" -}}{{ include "dyref.fullname" . }}-ray{{- end -}}

{{- define "dyref.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "dyref.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dyref.image" -}}{{ printf "%s:%s" .Values.image.repository .Values.image.tag }}{{- end -}}

{{- define "dyref.authSecret" -}}
{{- default (printf "%s-ray-auth" (include "dyref.fullname" .)) .Values.ray.auth.existingSecret -}}
{{- end -}}

{{- define "dyref.redisHost" -}}{{ include "dyref.fullname" . }}-redis{{- end -}}

{{/* Environment shared by every DyRef container (Ray pods, drivers, learner). */}}
{{- define "dyref.env" -}}
- name: DYREF_PROFILE
  value: {{ .Values.profile | quote }}
{{- if .Values.redis.bundled }}
- name: DYREF_REDIS__URL
  value: {{ printf "redis://%s:6379/0" (include "dyref.redisHost" .) | quote }}
{{- else if .Values.redis.externalUrlSecret.name }}
- name: DYREF_REDIS__URL
  valueFrom:
    secretKeyRef: {name: {{ .Values.redis.externalUrlSecret.name | quote }}, key: {{ .Values.redis.externalUrlSecret.key | quote }}}
{{- else }}
- name: DYREF_REDIS__URL
  value: {{ required "redis.externalUrl (or redis.externalUrlSecret) is required when redis.bundled is false" .Values.redis.externalUrl | quote }}
{{- end }}
- name: DYREF_REDIS__EMBEDDED
  value: "false"
- name: DYREF_METRICS_PORT
  value: {{ .Values.metricsPort | quote }}
- name: DYREF_METRICS_HOST
  value: "0.0.0.0"
- name: DYREF_RUN_DIR
  value: /data/runs
- name: DYREF_RL__CHECKPOINT_DIR
  value: /data/runs/rl
- name: RAY_AUTH_MODE
  value: {{ .Values.ray.auth.mode | quote }}
{{- if eq .Values.ray.auth.mode "token" }}
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ include "dyref.authSecret" . | quote }}, key: token}
{{- end }}
- name: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
  value: "1"
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
- name: HF_HUB_OFFLINE
  value: "1"
- name: TRANSFORMERS_OFFLINE
  value: "1"
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Ray Client address used by the drivers. */}}
{{- define "dyref.rayClientAddress" -}}
{{- printf "ray://%s-head-svc.%s.svc:10001" (include "dyref.rayCluster" .) .Release.Namespace -}}
{{- end -}}

{{- define "dyref.modelsVolume" -}}
{{- if .Values.models.existingClaim }}
- name: models
  persistentVolumeClaim: {claimName: {{ .Values.models.existingClaim | quote }}, readOnly: true}
{{- else }}
- name: models
  emptyDir: {}
{{- end }}
{{- end -}}

{{- define "dyref.modelsMount" -}}
- name: models
  mountPath: {{ .Values.models.mountPath | quote }}
  readOnly: true
{{- end -}}

{{/* A Ray Client driver: a small pod running one `dyref <service>` command. */}}
{{- define "dyref.driver" -}}
{{- $ := index . 0 -}}{{- $name := index . 1 -}}{{- $args := index . 2 -}}{{- $probe := index . 3 -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "dyref.fullname" $ }}-{{ $name }}
  labels:
    {{- include "dyref.labels" $ | nindent 4 }}
    app.kubernetes.io/component: {{ $name }}
spec:
  replicas: 1
  selector:
    matchLabels:
      {{- include "dyref.selector" $ | nindent 6 }}
      app.kubernetes.io/component: {{ $name }}
  template:
    metadata:
      labels:
        {{- include "dyref.selector" $ | nindent 8 }}
        app.kubernetes.io/component: {{ $name }}
        {{- if $probe }}
        dyref.io/metrics: "driver"
        {{- end }}
    spec:
      {{- with $.Values.imagePullSecrets }}
      imagePullSecrets: {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext: {{- toYaml $.Values.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ $name }}
          image: {{ include "dyref.image" $ }}
          imagePullPolicy: {{ $.Values.image.pullPolicy }}
          args: {{- toYaml $args | nindent 12 }}
          env:
            {{- include "dyref.env" $ | nindent 12 }}
            - name: DYREF_RAY__ADDRESS
              value: {{ include "dyref.rayClientAddress" $ | quote }}
          ports:
            - {name: metrics, containerPort: {{ $.Values.metricsPort }}}
          {{- if $probe }}
          readinessProbe:
            httpGet: {path: /metrics, port: metrics}
            periodSeconds: 10
          livenessProbe:
            httpGet: {path: /metrics, port: metrics}
            initialDelaySeconds: 120
            periodSeconds: 20
          {{- end }}
          resources: {{- toYaml $.Values.drivers.resources | nindent 12 }}
          securityContext: {{- toYaml $.Values.securityContext | nindent 12 }}
          volumeMounts:
            {{- include "dyref.modelsMount" $ | nindent 12 }}
      volumes:
        {{- include "dyref.modelsVolume" $ | nindent 8 }}
{{- end -}}
