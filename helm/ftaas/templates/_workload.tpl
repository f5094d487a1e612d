{{/* One ftaas Deployment. Arguments: root, component, replicas, args, resources, gpus, grace,
nodeSelector, tolerations, port (0: none), probes (bool), initMigrate (bool). */}}
{{- define "ftaas.deployment" -}}
{{- $root := .root -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "ftaas.fullname" $root }}-{{ .component }}
  labels:
    {{- include "ftaas.labels" (dict "root" $root "component" .component) | nindent 4 }}
spec:
  {{- if not .autoscaled }}
  replicas: {{ .replicas }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "ftaas.selectorLabels" (dict "root" $root "component" .component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "ftaas.labels" (dict "root" $root "component" .component) | nindent 8 }}
      annotations:
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    spec:
      serviceAccountName: {{ include "ftaas.serviceAccountName" $root }}
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: {{ .grace }}
      securityContext:
        {{- include "ftaas.podSecurityContext" $root | nindent 8 }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if .initMigrate }}
      initContainers:
        - name: migrate
          image: {{ include "ftaas.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: ["migrate"]
          {{- include "ftaas.env" $root | nindent 10 }}
          securityContext:
            {{- include "ftaas.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            {{- include "ftaas.volumeMounts" $root | nindent 12 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "ftaas.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: {{ toJson .args }}
          {{- include "ftaas.env" $root | nindent 10 }}
          env:
            # Thread budgets from the pod's CPU request (contracts.machine): pods that share a node then
            # compute on what the scheduler set aside for each, not on every core of the node.
            - name: FTAAS_RESOURCES_CORES
              valueFrom:
                resourceFieldRef:
                  containerName: {{ .component }}
                  resource: requests.cpu
                  divisor: "1"
            # Each pod computes alone on its request: no activity board between pods.
            - name: FTAAS_RESOURCES_SHARING
              value: "off"
          {{- if .port }}
          ports:
            - name: http
              containerPort: {{ .port }}
              protocol: TCP
          {{- end }}
          {{- if .probes }}
          startupProbe:
            httpGet: {path: /health/live, port: http}
            periodSeconds: 5
            failureThreshold: 60
          livenessProbe:
            httpGet: {path: /health/live, port: http}
            periodSeconds: 10
            failureThreshold: 3
          readinessProbe:
            httpGet: {path: /health/ready, port: http}
            periodSeconds: 5
            failureThreshold: 2
          {{- end }}
          resources:
            {{- include "ftaas.resources" (dict "resources" .resources "gpus" .gpus) | nindent 12 }}
          securityContext:
            {{- include "ftaas.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            {{- include "ftaas.volumeMounts" $root | nindent 12 }}
      volumes:
        {{- include "ftaas.volumes" $root | nindent 8 }}
{{- end -}}
