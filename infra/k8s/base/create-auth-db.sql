-- MLflow's basic-auth app keeps users and permissions in a database of its own (its migrations would clash with
-- the tracking store's). Run by PostgreSQL's entrypoint on the first start only (empty volume); on an existing
-- volume run it once by hand: kubectl -n adcore exec postgres-0 -- psql -U mlflow -c 'CREATE DATABASE mlflow_auth'
CREATE DATABASE mlflow_auth;
