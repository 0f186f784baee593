{{/*
Names. The release is usually called "routed", which gives "routed-agent",
"routed-controller"... rather than "routed-routed-agent".
*/}}
{{- define "routed.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "routed.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "routed.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "routed.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: routed
{{- end -}}

{{/* Selector labels of one component: include "routed.selectorLabels" (list . "agent") */}}
{{- define "routed.selectorLabels" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "routed.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "routed.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "routed.agentServiceAccount" -}}{{ include "routed.fullname" . }}-agent{{- end -}}
{{- define "routed.controllerServiceAccount" -}}{{ include "routed.fullname" . }}-controller{{- end -}}
{{- define "routed.cniServiceAccount" -}}{{ include "routed.fullname" . }}-cni{{- end -}}
{{- define "routed.configMapName" -}}{{ include "routed.fullname" . }}-config{{- end -}}

{{/*
Pod MTU: the value given, or 0: each node's agent derives it from its uplink's MTU less
the pools' encapsulation overhead (VXLAN 50 bytes, IPIP 20), as Calico's auto-detection does.
*/}}
{{- define "routed.mtu" -}}
{{- .Values.mtu | int -}}
{{- end -}}

{{- define "routed.ipipMode" -}}
{{- if eq .Values.ipPool.encapsulation "IPIP" }}{{ .Values.ipPool.encapsulationMode }}{{ else }}Never{{ end -}}
{{- end -}}

{{- define "routed.vxlanMode" -}}
{{- if eq .Values.ipPool.encapsulation "VXLAN" }}{{ .Values.ipPool.encapsulationMode }}{{ else }}Never{{ end -}}
{{- end -}}

{{- define "routed.vxlanMode6" -}}
{{- if eq .Values.ipv6Pool.encapsulation "VXLAN" }}{{ .Values.ipv6Pool.encapsulationMode }}{{ else }}Never{{ end -}}
{{- end -}}

{{- define "routed.meshEnabled" -}}
{{- and .Values.bgp.nodeToNodeMesh (not .Values.routeReflector.enabled) -}}
{{- end -}}

{{/* Where the etcd client certificates are mounted in every container that talks to etcd. */}}
{{- define "routed.etcdTLSDir" -}}/etc/routed/etcd-tls{{- end -}}

{{/* Every BGP password the agents read: the peers' and the route reflectors'. */}}
{{- define "routed.passwordRefs" -}}
{{- $refs := list -}}
{{- range .Values.bgp.peers -}}
{{- if .passwordSecret -}}
{{- $refs = append $refs .passwordSecret -}}
{{- end -}}
{{- end -}}
{{- if and .Values.routeReflector.enabled .Values.routeReflector.passwordSecret.name -}}
{{- $refs = append $refs .Values.routeReflector.passwordSecret -}}
{{- end -}}
{{- toJson $refs -}}
{{- end -}}

{{/* The Secret names (sorted, unique) the BGP passwords come from. */}}
{{- define "routed.passwordSecrets" -}}
{{- $names := list -}}
{{- range (include "routed.passwordRefs" . | fromJsonArray) -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- $names | uniq | sortAlpha | join "," -}}
{{- end -}}

{{/* The network of an IPv4 address with prefix: 192.0.2.250/24 -> 192.0.2.0/24 (BIRD wants it exact). */}}
{{- define "routed.networkOf" -}}
{{- $parts := splitList "/" . -}}
{{- $length := int (last $parts) -}}
{{- $sizes := list 256 128 64 32 16 8 4 2 1 -}}
{{- $octets := list -}}
{{- range $i, $octet := splitList "." (first $parts) -}}
{{- $size := index $sizes (max 0 (min 8 (sub $length (mul 8 $i)))) -}}
{{- $octets = append $octets (mul (div (int $octet) $size) $size) -}}
{{- end -}}
{{- printf "%s/%d" (join "." $octets) $length -}}
{{- end -}}

{{/* Environment every container that talks to etcd gets: the ConfigMap plus nothing else. */}}
{{- define "routed.etcdEnvFrom" -}}
- configMapRef:
    name: {{ include "routed.configMapName" . }}
{{- end -}}

{{- define "routed.etcdTLSVolume" -}}
{{- if .Values.etcd.tls.enabled }}
- name: etcd-tls
  secret:
    secretName: {{ .Values.etcd.tls.secretName }}
    # Group-readable: the controller and the config job run as nobody (fsGroup).
    defaultMode: 0440
    items:
      - key: ca.crt
        path: ca.crt
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- end -}}

{{- define "routed.etcdTLSMount" -}}
{{- if .Values.etcd.tls.enabled }}
- name: etcd-tls
  mountPath: {{ include "routed.etcdTLSDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/*
Checks the schema cannot express (it sees one value at a time). Included by the
ConfigMap, so `helm template` and `helm install` fail with a clear message.
*/}}
{{- define "routed.validate" -}}
{{- $prefix := .Values.ipPool.cidr | splitList "/" | last | int -}}
{{- if gt $prefix (int .Values.ipPool.blockSize) -}}
{{- fail (printf "ipPool.cidr %s is smaller than one block (ipPool.blockSize %d)" .Values.ipPool.cidr (int .Values.ipPool.blockSize)) -}}
{{- end -}}
{{- if .Values.ipv6Pool.create -}}
{{- $prefix6 := .Values.ipv6Pool.cidr | splitList "/" | last | int -}}
{{- if gt $prefix6 (int .Values.ipv6Pool.blockSize) -}}
{{- fail (printf "ipv6Pool.cidr %s is smaller than one block (ipv6Pool.blockSize %d)" .Values.ipv6Pool.cidr (int .Values.ipv6Pool.blockSize)) -}}
{{- end -}}
{{- end -}}
{{- $names := list -}}
{{- range .Values.bgp.peers -}}
{{- if has .name $names -}}
{{- fail (printf "bgp.peers: the name %q is used twice" .name) -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- include "routed.validatePorts" . -}}
{{- end -}}

{{/*
The agent and the controller both run on the host network: every port either listens on
must differ from the others on the same node (loopback health ports, the BGP port, the
/metrics listeners).
*/}}
{{- define "routed.validatePorts" -}}
{{- $listeners := list (list "agent.healthPort" .Values.agent.healthPort) (list "bgp.listenPort" (.Values.bgp.listenPort | default 179)) -}}
{{- if .Values.controller.enabled -}}
{{- $listeners = append $listeners (list "controller.healthPort" .Values.controller.healthPort) -}}
{{- end -}}
{{- if .Values.metrics.enabled -}}
{{- $listeners = append $listeners (list "metrics.agent.port" .Values.metrics.agent.port) -}}
{{- if .Values.controller.enabled -}}
{{- $listeners = append $listeners (list "metrics.controller.port" .Values.metrics.controller.port) -}}
{{- end -}}
{{- end -}}
{{- $taken := dict -}}
{{- range $listeners -}}
{{- $port := index . 1 | int | toString -}}
{{- if hasKey $taken $port -}}
{{- fail (printf "%s and %s are both port %s: the agent and the controller run on the host network, so every port they listen on must differ" (index $taken $port) (index . 0) $port) -}}
{{- end -}}
{{- $_ := set $taken $port (index . 0) -}}
{{- end -}}
{{- end -}}

{{/*
The /metrics listener of a component: its arguments, environment and port, when
metrics.enabled. include "routed.metricsArgs" (list . "agent"); "" binds the pod's IP
(status.podIP; for the host-network agent, the node's address).
*/}}
{{- define "routed.metricsArgs" -}}
{{- $ := index . 0 -}}
{{- $listener := index $.Values.metrics (index . 1) -}}
{{- if $.Values.metrics.enabled }}
- --metrics-port={{ $listener.port }}
{{- end }}
{{- end -}}

{{- define "routed.metricsEnv" -}}
{{- $ := index . 0 -}}
{{- $listener := index $.Values.metrics (index . 1) -}}
{{- if $.Values.metrics.enabled }}
- name: ROUTED_METRICS_HOST
{{- if $listener.bindAddress }}
  value: {{ $listener.bindAddress | quote }}
{{- else }}
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end }}
{{- end }}
{{- end -}}

{{- define "routed.metricsPorts" -}}
{{- $ := index . 0 -}}
{{- $listener := index $.Values.metrics (index . 1) -}}
{{- if $.Values.metrics.enabled }}
ports:
  - name: metrics
    containerPort: {{ $listener.port }}
    protocol: TCP
{{- end }}
{{- end -}}
