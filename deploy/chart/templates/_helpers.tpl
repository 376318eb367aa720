{{/*
How this chart works: every object is read from the kustomize manifests of
deploy/ (files/ holds symbolic links to them and to lua/rules), parsed, edited
in place by the helpers below according to the values, and written out again.
deploy/ stays the one source; a value left empty keeps what it says there.
The helpers that edit take (list $ object) and mutate the object; call them as
  {{- $_ := include "sao.xxx" (list $ $obj) }}
*/}}

{{/* The documents of a multi-document YAML file under files/, parsed; empty ones dropped. */}}
{{- define "sao.docs" -}}
{{- $root := index . 0 -}}
{{- $out := list -}}
{{- range $doc := regexSplit "(?m)^---[ \t]*$" ($root.Files.Get (index . 1)) -1 -}}
{{- $o := fromYaml $doc -}}
{{- if hasKey $o "Error" -}}{{- fail (printf "%s: %s" (index $ 1) $o.Error) -}}{{- end -}}
{{- if $o.kind -}}{{- $out = append $out $o -}}{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* deploy/'s namespace names -> the configured ones. */}}
{{- define "sao.ns" -}}
{{- $root := index . 0 -}}{{- $ns := index . 1 -}}
{{- if eq $ns "sync-airbnb-system" -}}{{ $root.Values.namespaces.operator }}
{{- else if eq $ns "sync-airbnb" -}}{{ $root.Values.namespaces.workers }}
{{- else -}}{{- fail (printf "deploy/ names an unknown namespace %q" $ns) -}}
{{- end -}}
{{- end -}}

{{- define "sao.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Every object: namespaces mapped, the chart's labels added. */}}
{{- define "sao.common" -}}
{{- $root := index . 0 -}}{{- $o := index . 1 -}}
{{- $md := $o.metadata -}}
{{- if $md.namespace -}}{{- $_ := set $md "namespace" (include "sao.ns" (list $root $md.namespace)) -}}{{- end -}}
{{- $labels := default (dict) $md.labels -}}
{{- $_ := set $labels "helm.sh/chart" (printf "%s-%s" $root.Chart.Name $root.Chart.Version) -}}
{{- $_ := set $labels "app.kubernetes.io/instance" $root.Release.Name -}}
{{- $_ := set $md "labels" $labels -}}
{{- range $s := default (list) $o.subjects -}}
{{- if $s.namespace -}}{{- $_ := set $s "namespace" (include "sao.ns" (list $root $s.namespace)) -}}{{- end -}}
{{- end -}}
{{- end -}}

{{/* The rules ConfigMap's name: the user's own (rules.existingConfigMap), else deploy/'s. */}}
{{- define "sao.rulesConfigMap" -}}
{{- default "sync-airbnb-operator-rules" .Values.rules.existingConfigMap -}}
{{- end -}}

{{/* A container of the operator or the Job: image, settings, extra env and mounts. */}}
{{- define "sao.container" -}}
{{- $root := index . 0 -}}{{- $c := index . 1 -}}{{- $resources := index . 2 -}}
{{- $_ := set $c "image" (include "sao.image" $root) -}}
{{- $_ := set $c "imagePullPolicy" $root.Values.image.pullPolicy -}}
{{- range $e := $c.env -}}
{{- if eq $e.name "OPERATOR_NAMESPACE" -}}{{- $_ := set $e "value" $root.Values.namespaces.workers -}}{{- end -}}
{{- if eq $e.name "WORKER_IMAGE" -}}{{- $_ := set $e "value" $root.Values.workerImage -}}{{- end -}}
{{- if and (eq $e.name "LOG_LEVEL") $root.Values.logLevel -}}{{- $_ := set $e "value" $root.Values.logLevel -}}{{- end -}}
{{- if and (eq $e.name "ACCOUNTS_TABLE") $root.Values.accountsTable -}}{{- $_ := set $e "value" $root.Values.accountsTable -}}{{- end -}}
{{- if eq $e.name "RULES_CONFIGMAP" -}}{{- $_ := set $e "value" (printf "%s/%s" $root.Values.namespaces.operator (include "sao.rulesConfigMap" $root)) -}}{{- end -}}
{{- end -}}
{{- with $root.Values.extraEnv -}}{{- $_ := set $c "env" (concat $c.env .) -}}{{- end -}}
{{- with $root.Values.extraVolumeMounts -}}{{- $_ := set $c "volumeMounts" (concat (default (list) $c.volumeMounts) .) -}}{{- end -}}
{{- with $resources -}}{{- $_ := set $c "resources" . -}}{{- end -}}
{{- end -}}

{{/* A pod spec of the operator or the Job. */}}
{{- define "sao.podspec" -}}
{{- $root := index . 0 -}}{{- $spec := index . 1 -}}
{{- with $root.Values.imagePullSecrets -}}{{- $_ := set $spec "imagePullSecrets" . -}}{{- end -}}
{{- with $root.Values.extraVolumes -}}{{- $_ := set $spec "volumes" (concat (default (list) $spec.volumes) .) -}}{{- end -}}
{{- end -}}

{{/* Emits objects (a list) as YAML documents. */}}
{{- define "sao.emit" -}}
{{- range $o := . }}
---
{{ toYaml $o }}
{{- end }}
{{- end -}}
