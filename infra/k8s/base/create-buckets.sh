#!/bin/sh
# Creates the buckets, their retention rules and two MinIO users with policies of their own:
#   adcore-pipeline (keys from Secret adcore-s3):        read "datasets"; read/write "models" and "pipeline-root"
#   adcore-mlflow   (keys from Secret adcore-mlflow-s3): read/write "mlflow" (the tracking server's artifacts)
# Retention: pipeline-root objects (KFP artifacts: per-category datasets, feature caches, models; the durable copy
# of a model is MLflow's) expire after PIPELINE_ROOT_RETENTION_DAYS, checkpoints after CHECKPOINT_RETENTION_DAYS.
# Idempotent: safe to run again after every `kubectl apply -k`.
set -eu

MINIO_URL="${MINIO_URL:-http://minio:9000}"
PIPELINE_ROOT_RETENTION_DAYS="${PIPELINE_ROOT_RETENTION_DAYS:-30}"
CHECKPOINT_RETENTION_DAYS="${CHECKPOINT_RETENTION_DAYS:-7}"

tries=0
until mc alias set adcore "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "MinIO at $MINIO_URL not reachable after 5 minutes" >&2
    exit 1
  fi
  sleep 5
done

mc mb --ignore-existing adcore/mlflow adcore/datasets adcore/models adcore/pipeline-root

# Retention (an existing rule with the same settings is left as it is).
if ! mc ilm rule ls adcore/pipeline-root 2>/dev/null | grep -q "$PIPELINE_ROOT_RETENTION_DAYS"; then
  mc ilm rule add adcore/pipeline-root --expire-days "$PIPELINE_ROOT_RETENTION_DAYS"
fi
if ! mc ilm rule ls adcore/models 2>/dev/null | grep -q "checkpoints/"; then
  mc ilm rule add adcore/models --prefix "checkpoints/" --expire-days "$CHECKPOINT_RETENTION_DAYS"
fi

for key in "$PIPELINE_ACCESS_KEY_ID" "$MLFLOW_ACCESS_KEY_ID"; do
  if [ "$key" = "$MINIO_ROOT_USER" ]; then
    echo "adcore-s3 and adcore-mlflow-s3 must not use the MinIO root user" >&2
    exit 1
  fi
done
if [ "$PIPELINE_ACCESS_KEY_ID" = "$MLFLOW_ACCESS_KEY_ID" ]; then
  echo "adcore-s3 and adcore-mlflow-s3 must be two different identities" >&2
  exit 1
fi

cat > /tmp/adcore-pipeline.json <<'POLICY'
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket"],
     "Resource": ["arn:aws:s3:::datasets", "arn:aws:s3:::models", "arn:aws:s3:::pipeline-root"]},
    {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::datasets/*"]},
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload",
                                   "s3:ListMultipartUploadParts"],
     "Resource": ["arn:aws:s3:::models/*", "arn:aws:s3:::pipeline-root/*"]},
    {"Effect": "Allow", "Action": ["s3:DeleteObject"], "Resource": ["arn:aws:s3:::models/checkpoints/*"]}
  ]
}
POLICY

cat > /tmp/adcore-mlflow.json <<'POLICY'
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
     "Resource": ["arn:aws:s3:::mlflow"]},
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                                   "s3:ListMultipartUploadParts"],
     "Resource": ["arn:aws:s3:::mlflow/*"]}
  ]
}
POLICY

attach() {  # policy user: a repeated attach is not an error
  if ! out=$(mc admin policy attach adcore "$1" --user "$2" 2>&1); then
    case "$out" in
      *"already in effect"*) ;;
      *) echo "$out" >&2; exit 1 ;;
    esac
  fi
}

mc admin policy create adcore adcore-pipeline /tmp/adcore-pipeline.json
mc admin policy create adcore adcore-mlflow /tmp/adcore-mlflow.json
mc admin user add adcore "$PIPELINE_ACCESS_KEY_ID" "$PIPELINE_SECRET_ACCESS_KEY"
mc admin user add adcore "$MLFLOW_ACCESS_KEY_ID" "$MLFLOW_SECRET_ACCESS_KEY"
attach adcore-pipeline "$PIPELINE_ACCESS_KEY_ID"
attach adcore-mlflow "$MLFLOW_ACCESS_KEY_ID"
echo "buckets, retention rules and users $PIPELINE_ACCESS_KEY_ID (adcore-pipeline), $MLFLOW_ACCESS_KEY_ID (adcore-mlflow) are ready"
