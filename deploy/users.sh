#!/bin/sh
# Run once by compose's `minio-users` (`users.sh minio`, in the mc image) and `rabbitmq-users`
# (`users.sh rabbitmq`, in a curl image) with the admin credentials: creates the bucket and
# medembed's two identities, so that no medembed process holds MinIO's root or RabbitMQ's admin.
#   medembed-worker: read and write the bucket; configure, read and write medembed's queues.
#   medembed-api:    read the bucket and write job specs only; the fetch queue family only.
set -eu
if [ "$1" = rabbitmq ]; then
  rabbit() { curl -fsS -u "admin:$ADMIN_PASSWORD" -H 'content-type: application/json' -X PUT "http://rabbitmq:15672/api/$1" -d "$2"; }
  rabbit users/medembed-worker "{\"password\": \"$WORKER_AMQP_PASSWORD\", \"tags\": \"\"}"
  rabbit users/medembed-api "{\"password\": \"$API_AMQP_PASSWORD\", \"tags\": \"\"}"
  # Queues and exchanges are named medembed.*; publishing goes through the default exchange.
  # The api may only declare and publish to the fetch queue family and the dead-letter exchange.
  # It needs read there too: RabbitMQ checks read on a queue declared with a dead-letter
  # exchange (checked against RabbitMQ 3.10 with medembed-api and medembed-fetcher as these
  # users: the api's submit is queued, the worker consumes it, the api cannot consume
  # another stage's queue or declare one).
  rabbit permissions/%2f/medembed-worker '{"configure": "^medembed\\.", "write": "^(medembed\\..*|amq\\.default)$", "read": "^medembed\\."}'
  rabbit permissions/%2f/medembed-api '{"configure": "^medembed\\.(dlx|fetch(\\..*)?)$", "write": "^(medembed\\.(dlx|fetch(\\..*)?)|amq\\.default)$", "read": "^medembed\\.(dlx|fetch(\\..*)?)$"}'
  echo "rabbitmq: medembed-worker and medembed-api ready"
  exit 0
fi
mc alias set local http://minio:9000 admin "$ADMIN_PASSWORD"
mc mb --ignore-existing local/medembed
mc admin policy create local medembed-worker /policies/worker.json
mc admin policy create local medembed-api /policies/api.json
mc admin user add local medembed-worker "$WORKER_S3_SECRET"
mc admin user add local medembed-api "$API_S3_SECRET"
mc admin policy attach local medembed-worker --user medembed-worker || true
mc admin policy attach local medembed-api --user medembed-api || true

echo "minio: bucket medembed, users medembed-worker and medembed-api ready"
