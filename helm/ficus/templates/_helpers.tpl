{{/* The chart name, or nameOverride. */}}
{{- define "ficus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every resource name: release and chart name, once when they coincide. */}}
{{- define "ficus.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The name of one component's resources: `ficus.component` with dict "root" $ "component" "planner". */}}
{{- define "ficus.component" -}}
{{- printf "%s-%s" (include "ficus.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ficus.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every resource carries. */}}
{{- define "ficus.labels" -}}
helm.sh/chart: {{ include "ficus.chart" . }}
app.kubernetes.io/name: {{ include "ficus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "ficus.version" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ficus
{{- end }}

{{/* Labels of one component's resources: dict "root" $ "component" "planner". */}}
{{- define "ficus.componentLabels" -}}
{{ include "ficus.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* What selects one component's pods; never changes across upgrades. */}}
{{- define "ficus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ficus.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* What selects every pod of the release. */}}
{{- define "ficus.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "ficus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ficus.version" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "ficus.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "ficus.version" .) }}
{{- end }}

{{/*
The services: name, ports, and the peers each calls. One list drives every
per-service resource, so the four never drift apart.
*/}}
{{- define "ficus.services" -}}
planner: { grpcPort: 7001, adminPort: 9001, peers: [traffic, analysis] }
analysis: { grpcPort: 7002, adminPort: 9002, peers: [traffic] }
traffic: { grpcPort: 7003, adminPort: 9003, proxyPort: 8080, peers: [] }
sessions: { grpcPort: 7004, adminPort: 9004, peers: [] }
{{- end }}

{{/* The gRPC address of one service inside the cluster: dict "root" $ "component" "traffic". */}}
{{- define "ficus.address" -}}
{{- $services := include "ficus.services" .root | fromYaml }}
{{- printf "%s:%v" (include "ficus.component" .) (get $services .component).grpcPort }}
{{- end }}

{{/* The Secret holding the Redis password, and its key. */}}
{{- define "ficus.redisSecretName" -}}
{{- default (printf "%s-redis" (include "ficus.fullname" .)) .Values.redis.auth.existingSecret }}
{{- end }}

{{- define "ficus.redisSecretKey" -}}
{{- if .Values.redis.auth.existingSecret }}{{ .Values.redis.auth.existingSecretKey }}{{ else }}password{{ end }}
{{- end }}

{{- define "ficus.redisHost" -}}
{{- if .Values.redis.bundled }}{{ printf "%s-redis" (include "ficus.fullname" .) }}{{ else }}{{ .Values.redis.host }}{{ end }}
{{- end }}

{{/*
The store URL of one component, for FICUS_STORE. The password is never written into
it: Kubernetes expands $(FICUS_REDIS_PASSWORD) from the Secret when the pod starts.
*/}}
{{- define "ficus.storeUrl" -}}
{{- $redis := .root.Values.redis }}
{{- $scheme := ternary "rediss" "redis" (and $redis.tls (not $redis.bundled)) }}
{{- $auth := ternary ":$(FICUS_REDIS_PASSWORD)@" "" $redis.auth.enabled }}
{{- printf "%s://%s%s:%v/%v" $scheme $auth (include "ficus.redisHost" .root) $redis.port (get $redis.databases .component) }}
{{- end }}

{{/* The namespace ficus acts in. */}}
{{- define "ficus.targetNamespace" -}}
{{- default .Release.Namespace .Values.kubernetes.namespace }}
{{- end }}

{{/*
The Kubernetes API rules of one component: exactly the verbs its code uses.
*/}}
{{- define "ficus.rules" -}}
{{- if eq .component "traffic" }}
# The stable Ingress is read; the canary Ingress is applied and deleted with its route.
- apiGroups: [networking.k8s.io]
  resources: [ingresses]
  verbs: [get, create, patch, delete]
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, patch]
- apiGroups: [networking.istio.io]
  resources: [virtualservices]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [services]
  verbs: [get, patch]
{{- else if eq .component "analysis" }}
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
{{- else if eq .component "planner" }}
- apiGroups: [ficus.dev]
  resources: [rollouts]
  verbs: [get, list, watch, patch]
- apiGroups: [ficus.dev]
  resources: [rollouts/status]
  verbs: [patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get]
- apiGroups: [apps]
  resources: [deployments/scale]
  verbs: [patch]
{{- end }}
{{- end }}

{{/* The Secret holding the token file, and its generated admin token. */}}
{{- define "ficus.authSecretName" -}}
{{- default (printf "%s-auth" (include "ficus.fullname" .)) .Values.auth.tokenFile.existingSecret }}
{{- end }}

{{/* The Secret holding the services' TLS certificate, key and CA. */}}
{{- define "ficus.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "ficus.fullname" .)) .Values.tls.secretName }}
{{- end }}

{{/* The user name TokenReview gives one component's ServiceAccount: dict "root" $ "component" "planner". */}}
{{- define "ficus.serviceAccountUser" -}}
{{- printf "system:serviceaccount:%s:%s" .root.Release.Namespace (include "ficus.component" .) }}
{{- end }}

{{/* Where a pod finds the ServiceAccount token it presents to ficus APIs. */}}
{{- define "ficus.presentedTokenDir" -}}/var/run/secrets/ficus{{- end }}

{{/* Where a pod finds the TLS Secret. */}}
{{- define "ficus.tlsDir" -}}/etc/ficus/tls{{- end }}

{{/*
The projected ServiceAccount token a pod presents to ficus APIs, bound to the audience
TokenReview checks; the kubelet renews it and the services re-read it.
*/}}
{{- define "ficus.presentedTokenVolume" -}}
- name: ficus-token
  projected:
    sources:
      - serviceAccountToken:
          audience: {{ .Values.auth.tokenReview.audience | quote }}
          expirationSeconds: 3600
          path: token
{{- end }}

{{/* Refuses combinations the schema cannot express, with a message naming the values. */}}
{{- define "ficus.validate" -}}
{{- if and .Values.auth.enabled (not .Values.serviceAccount.create) }}
{{- fail "auth.enabled: the services know each other by their ServiceAccounts; set serviceAccount.create=true" }}
{{- end }}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) }}
{{- fail "tls.certManager.issuerRef.name: name the cert-manager issuer of the Certificate" }}
{{- end }}
{{- if eq .Values.store.backend "embedded" }}
{{- range $name := list "planner" "analysis" "traffic" "sessions" }}
{{- if gt (int (get $.Values $name).replicas) 1 }}
{{- fail (printf "%s.replicas: more than one replica needs store.backend=redis; an embedded store belongs to one pod" $name) }}
{{- end }}
{{- end }}
{{- if .Values.traffic.autoscaling.enabled }}
{{- fail "traffic.autoscaling.enabled: autoscaling needs store.backend=redis; an embedded store belongs to one pod" }}
{{- end }}
{{- else }}
{{- if and (not .Values.redis.bundled) (not .Values.redis.host) }}
{{- fail "redis.host: set the host of your Redis, or redis.bundled=true, when store.backend=redis" }}
{{- end }}
{{- if and .Values.redis.auth.enabled (not .Values.redis.auth.existingSecret) (not .Values.redis.auth.password) }}
{{- fail "redis.auth.password: set it, or redis.auth.existingSecret, or redis.auth.enabled=false" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The ficus.toml of one component: listen addresses, peers and telemetry from the values,
with the component's `config` merged over them.
*/}}
{{- define "ficus.config" -}}
{{- $root := .root }}
{{- $services := include "ficus.services" $root | fromYaml }}
{{- $service := get $services .component }}
{{- $config := dict
  "server" (dict "grpc_addr" (printf "0.0.0.0:%v" $service.grpcPort) "admin_addr" (printf "0.0.0.0:%v" $service.adminPort))
  "telemetry" (dict "log_format" $root.Values.telemetry.logFormat "log_level" $root.Values.telemetry.logLevel "sample_ratio" $root.Values.telemetry.sampleRatio)
}}
{{- if eq $root.Values.store.backend "embedded" }}
{{- $_ := set $config "store" (printf "/var/lib/ficus/%s" .component) }}
{{- end }}
{{- range $peer := $service.peers }}
{{- $_ := set $config $peer (include "ficus.address" (dict "root" $root "component" $peer)) }}
{{- end }}
{{- if eq .component "planner" }}
{{- $_ := set $config "lease_ttl" $root.Values.planner.leaseTtl }}
{{- end }}
{{- if and (eq .component "analysis") $root.Values.analysis.prometheusUrl }}
{{- $_ := set $config "prometheus" (dict "address" $root.Values.analysis.prometheusUrl) }}
{{- end }}
{{- if eq .component "traffic" }}
{{- $_ := set $config "proxy" (dict "listen" (printf "0.0.0.0:%v" $service.proxyPort)) }}
{{- end }}
{{- if $root.Values.kubernetes.enabled }}
{{- if eq .component "traffic" }}
{{- $_ := set $config "kubernetes" (dict "resync" $root.Values.kubernetes.resync) }}
{{- else if eq .component "analysis" }}
{{- $_ := set $config "kubernetes" (dict) }}
{{- else if eq .component "planner" }}
{{- $lease := printf "%s/%s" $root.Release.Namespace (include "ficus.component" (dict "root" $root "component" "planner")) }}
{{- $_ := set $config "kubernetes" (dict "namespace" (include "ficus.targetNamespace" $root) "lease" $lease) }}
{{- end }}
{{- end }}
{{- if $root.Values.auth.enabled }}
{{- $roles := dict
  (include "ficus.serviceAccountUser" (dict "root" $root "component" "planner")) (list "operator")
  (include "ficus.serviceAccountUser" (dict "root" $root "component" "analysis")) (list "viewer")
  (include "ficus.serviceAccountUser" (dict "root" $root "component" "test")) (list "viewer")
}}
{{- $review := dict
  "audiences" (list $root.Values.auth.tokenReview.audience)
  "cache_ttl" $root.Values.auth.tokenReview.cacheTtl
  "roles" (mustMergeOverwrite $roles (deepCopy $root.Values.auth.tokenReview.roles))
}}
{{- $auth := dict "token_file" "/etc/ficus/auth/tokens.csv" "token_review" $review }}
{{- if $service.peers }}
{{- $_ := set $auth "peer_token_file" (printf "%s/token" (include "ficus.presentedTokenDir" $root)) }}
{{- end }}
{{- $_ := set $config.server "auth" $auth }}
{{- else }}
{{- /* Authentication is left to something in front, as the values say. */}}
{{- $_ := set $config.server "auth" (dict "allow_unauthenticated" true) }}
{{- end }}
{{- if $root.Values.tls.enabled }}
{{- $dir := include "ficus.tlsDir" $root }}
{{- $_ := set $config.server "tls" (dict "cert" (printf "%s/tls.crt" $dir) "key" (printf "%s/tls.key" $dir)) }}
{{- if $service.peers }}
{{- $_ := set $config.server "peer_tls" (dict "ca_cert" (printf "%s/ca.crt" $dir)) }}
{{- end }}
{{- end }}
{{- toToml (mustMergeOverwrite $config (deepCopy (get $root.Values .component).config)) }}
{{- end }}
