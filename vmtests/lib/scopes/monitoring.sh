#!/bin/sh
# Scope "monitoring" (nixfleet.monitoring.nodeExporter): node exporter on :9100 with the
# framework's default collectors on (systemd among them) and its defaults off.
set -eu
mkdir -p "$ROOT/etc/default" "$ROOT/etc/systemd/system/multi-user.target.wants"
cat > "$ROOT/etc/default/prometheus-node-exporter" <<CONF
ARGS="--web.listen-address=:9100 --collector.systemd --collector.filesystem --collector.cpu --collector.meminfo --collector.netdev --collector.diskstats --collector.loadavg --collector.pressure --collector.time --no-collector.textfile --no-collector.wifi --no-collector.infiniband --no-collector.nfs --no-collector.zfs"
CONF
ln -sfn /lib/systemd/system/prometheus-node-exporter.service \
  "$ROOT/etc/systemd/system/multi-user.target.wants/prometheus-node-exporter.service"
