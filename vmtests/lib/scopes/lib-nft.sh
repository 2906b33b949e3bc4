# Shared by core.sh and firewall.sh: write /etc/nftables.conf into the node layer.
# Inputs: ROOT, OPEN_TCP_PORTS (space separated), FW_SSH_LIMIT (0/1), FW_LOG_REFUSED (0/1).
write_nftables() {
  ports=$(echo "$OPEN_TCP_PORTS" | tr ' ' '\n' | grep -v '^22$' | sort -un | paste -sd, -)
  ssh_rules="    tcp dport 22 accept"
  if [ "${FW_SSH_LIMIT:-0}" = 1 ]; then
    ssh_rules="    tcp dport 22 ct state new limit rate 5/minute accept
    tcp dport 22 ct state new counter log prefix \"nixfleet-fw ssh-rate-limit: \" level info drop
    tcp dport 22 accept"
  fi
  log_rule=""
  if [ "${FW_LOG_REFUSED:-0}" = 1 ]; then
    log_rule="    counter log prefix \"refused connection: \" level info"
  fi
  port_rule=""
  [ -n "$ports" ] && port_rule="    tcp dport { $ports } accept"
  cat > "$ROOT/etc/nftables.conf" <<NFT
#!/usr/sbin/nft -f
# Written by vmtests/lib/scopes (mirrors networking.firewall with nftables on NixOS).
flush ruleset
table inet nixos-fw {
  chain input {
    type filter hook input priority filter; policy drop;
    iifname "lo" accept
    ct state established,related accept
    ct state invalid drop
    meta l4proto { 1, 58 } accept
$ssh_rules
$port_rule
$log_rule
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
  }
}
NFT
}
