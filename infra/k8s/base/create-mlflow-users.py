"""Create (or reset the password of) the pipeline's MLflow user through the basic-auth REST API, as the admin.

Run by the Job mlflow-users after every `kubectl apply -k`: idempotent. Reads MLFLOW_AUTH_ADMIN_USERNAME /
MLFLOW_AUTH_ADMIN_PASSWORD (Secret adcore-mlflow-auth) and MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD
(Secret adcore-mlflow); MLFLOW_URL is the server (default http://mlflow:5000). No secret is ever printed.
"""

import os
import sys
import time

import requests

url = os.environ.get("MLFLOW_URL", "http://mlflow:5000").rstrip("/")
admin = (os.environ["MLFLOW_AUTH_ADMIN_USERNAME"], os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"])
user, password = os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]

for _ in range(60):
    try:
        if requests.get(f"{url}/health", timeout=5).ok:
            break
    except requests.RequestException:
        pass
    time.sleep(5)
else:
    sys.exit(f"MLflow at {url} not reachable after 5 minutes")

r = requests.post(f"{url}/api/2.0/mlflow/users/create", json={"username": user, "password": password}, auth=admin,
                  timeout=30)
if r.ok:
    print(f"created MLflow user {user}")
elif "RESOURCE_ALREADY_EXISTS" in r.text:
    r = requests.patch(f"{url}/api/2.0/mlflow/users/update-password", json={"username": user, "password": password},
                       auth=admin, timeout=30)
    if not r.ok:
        sys.exit(f"updating the password of {user} failed: HTTP {r.status_code}")
    print(f"MLflow user {user} exists; password set from the Secret")
else:
    sys.exit(f"creating MLflow user {user} failed: HTTP {r.status_code}")
