#!/bin/sh
# Creates the buckets "mlflow" and "datasets" and the pipelines' MinIO user (keys from Secret adcore-s3) with
# read/write on those two buckets only. Idempotent: safe to run again after every `kubectl apply -k`.
set -eu

MINIO_URL="${MINIO_URL:-http://minio:9000}"

tries=0
until mc alias set adcore "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "MinIO at $MINIO_URL not reachable after 5 minutes" >&2
    exit 1
  fi
  sleep 5
done

mc mb --ignore-existing adcore/mlflow adcore/datasets

if [ "$AWS_ACCESS_KEY_ID" = "$MINIO_ROOT_USER" ]; then
  echo "adcore-s3 uses the MinIO root user: no separate pipeline user created (not recommended)" >&2
  exit 0
fi

cat > /tmp/adcore-rw.json <<'POLICY'
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
      "Resource": ["arn:aws:s3:::mlflow", "arn:aws:s3:::datasets"]
    },
    {
      "Effect": "Allow",
      "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                 "s3:ListMultipartUploadParts"],
      "Resource": ["arn:aws:s3:::mlflow/*", "arn:aws:s3:::datasets/*"]
    }
  ]
}
POLICY

mc admin policy create adcore adcore-rw /tmp/adcore-rw.json
mc admin user add adcore "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"
if ! out=$(mc admin policy attach adcore adcore-rw --user "$AWS_ACCESS_KEY_ID" 2>&1); then
  case "$out" in
    *"already in effect"*) ;;
    *) echo "$out" >&2; exit 1 ;;
  esac
fi
echo "buckets mlflow, datasets and user $AWS_ACCESS_KEY_ID (policy adcore-rw) are ready"
