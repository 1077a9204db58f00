#!/usr/bin/env bash
# Regenerates the Python stubs in ca/_proto from proto/. Run after editing a .proto file.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -Ica/_proto=proto \
  --python_out=. --grpc_python_out=. --pyi_out=. \
  ca/_proto/istio_ca.proto ca/_proto/spiffe_workload.proto ca/_proto/meshca_admin.proto ca/_proto/meshca_control.proto
