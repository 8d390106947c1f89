#!/bin/sh
# Runs once, when the PostgreSQL volume is first created: a second database for MLflow's store.
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -c "CREATE DATABASE \"${MLFLOW_DB:-mlflow}\" OWNER \"$POSTGRES_USER\""
