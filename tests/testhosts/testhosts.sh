#!/usr/bin/env bash
# Real systemd test hosts for LLF on this one machine: systemd-nspawn containers that
# boot a debootstrapped Debian base with systemd as PID 1, each in its own network
# namespace with an address on a private bridge, reachable over ssh as root.
# See README.md beside this file. Usually called through `make testhosts-*`.
#
#   testhosts.sh up [N]   boot hosts 1..N (default 3), stop any above N, write the inventory
#   testhosts.sh down     power off and remove every host, the bridge and the inventory
#   testhosts.sh status   list the hosts
#   testhosts.sh check    verify the running hosts (systemd state, restarts, mesh, routes)
#   testhosts.sh base     build the cached base rootfs (once)
#   testhosts.sh deps     install debootstrap and systemd-container when missing
#   testhosts.sh clean    down, then delete the cached base and the ssh key
set -euo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C

SELF=$(readlink -f "${BASH_SOURCE[0]}")
HERE=$(dirname "$SELF")

# ---- settings (environment; mk/testhosts.mk passes the same names) -------------------
WORK=${TESTHOSTS_DIR:-/var/tmp/llf-testhosts}
BR=${TESTHOSTS_BRIDGE:-llfbr0}
BR_IP=${TESTHOSTS_BRIDGE_IP:-10.231.0.1}       # the machine's address on the bridge, /24
FIRST=${TESTHOSTS_FIRST:-11}                     # host i gets <bridge /24>.(FIRST+i-1)
NAME_PREFIX=${TESTHOSTS_PREFIX:-llf-th}          # host i is named <prefix>i
SUITE=${TESTHOSTS_SUITE:-bookworm}
INVENTORY_DIR=${TESTHOSTS_INVENTORY_DIR:-$HERE/inventory}
BOOT_TIMEOUT=${TESTHOSTS_BOOT_TIMEOUT:-120}      # seconds until ssh answers
STOP_TIMEOUT=${TESTHOSTS_STOP_TIMEOUT:-30}       # seconds for a clean poweroff
# Hosts have no route out: everything they need must be in the base.
DEFAULT_PKGS="systemd systemd-sysv dbus libpam-systemd python3 python3-venv python3-apt
  libnuma1 libtcmalloc-minimal4 openssh-server iproute2 iputils-ping sudo procps curl
  ca-certificates nftables nginx libnginx-mod-http-js openssl rsync prometheus
  prometheus-alertmanager prometheus-node-exporter prometheus-nginx-exporter"
PKGS=$(tr -s ', \t\n' '\n' <<<"${TESTHOSTS_PKGS:-$DEFAULT_PKGS}" | sed '/^$/d' | sort -u | paste -sd,)
BASE_FORMAT=3   # bump when customise_base changes: the cached base is then rebuilt

BASE=$WORK/base
HOSTS=$WORK/hosts
KEY=$WORK/id_ed25519
KNOWN_HOSTS=$WORK/known_hosts   # every host's ssh host keys, read from its own disk
STAMP=$WORK/base.stamp
NET=${BR_IP%.*}   # first three octets of the /24

# ---- helpers ---------------------------------------------------------------------------
log() { printf '==> %s\n' "$*"; }
die() { printf 'testhosts: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$(now)" -v b="$1" 'BEGIN { printf "%.1f s", a - b }'; }

validate() {
  [[ $WORK == /* && $WORK != / && $WORK != *[[:space:]]* ]] \
    || die "TESTHOSTS_DIR must be an absolute path other than / and without spaces (got '$WORK')"
  [[ $BR_IP =~ ^10\.([0-9]{1,3}\.){2}([0-9]{1,3})$ || $BR_IP =~ ^192\.168\.[0-9]{1,3}\.([0-9]{1,3})$ \
     || $BR_IP =~ ^172\.(1[6-9]|2[0-9]|3[01])\.[0-9]{1,3}\.([0-9]{1,3})$ ]] \
    || die "TESTHOSTS_BRIDGE_IP must be a private IPv4 address (got '$BR_IP')"
  [[ $NAME_PREFIX =~ ^[a-z][a-z0-9-]{0,8}$ ]] \
    || die "TESTHOSTS_PREFIX: lowercase letters, digits and '-', at most 9 characters (got '$NAME_PREFIX')"
  [[ $BR =~ ^[a-zA-Z0-9_-]{1,15}$ ]] || die "TESTHOSTS_BRIDGE: at most 15 characters (got '$BR')"
  if ! [[ $FIRST =~ ^[0-9]+$ ]] || ((FIRST < 2 || FIRST > 254)); then die "TESTHOSTS_FIRST must be 2..254"; fi
}

need_root() {
  [ "$(id -u)" = 0 ] || die "needs root (systemd-nspawn, mounts, network namespaces): run it as root"
}

lock() {  # one testhosts.sh at a time changes things; fd 9 must not leak into the hosts
  mkdir -p "$WORK"
  chmod 700 "$WORK"
  exec 9>"$WORK/.lock"
  flock -w 900 9 || die "another testhosts.sh holds $WORK/.lock"
}

host_name() { echo "$NAME_PREFIX$1"; }
host_ip() {
  local octet=$((FIRST + $1 - 1))
  ((octet <= 254)) || die "host $1 would get $NET.$octet: lower N or TESTHOSTS_FIRST"
  [ "$NET.$octet" != "$BR_IP" ] || die "host $1 would get the bridge address $BR_IP: change TESTHOSTS_FIRST"
  echo "$NET.$octet"
}

ssh_host() {  # ssh_host IP CMD...; only ever to the hosts' own addresses
  local ip=$1
  shift
  [[ $ip == "$NET".* ]] || die "refusing to ssh to $ip (not a test host address)"
  ssh -F /dev/null -q -i "$KEY" -o BatchMode=yes -o StrictHostKeyChecking=yes \
    -o UserKnownHostsFile="$KNOWN_HOSTS" -o ConnectTimeout=2 -o LogLevel=ERROR "root@$ip" "$@"
}

# The ssh host keys of hosts 1..N, read from their disks on this machine (the keys are
# made by prepare_host, never learnt over the network), as known_hosts lines for their
# addresses and names: ssh and Ansible check every host against them.
write_known_hosts() {
  local n=$1 i name tmp pub
  tmp=$(mktemp "$WORK/.known_hosts.XXXXXX")
  for ((i = 1; i <= n; i++)); do
    name=$(host_name "$i")
    for pub in "$HOSTS/$name/root/etc/ssh/"ssh_host_*_key.pub; do
      [ -s "$pub" ] || die "$name has no ssh host key in $HOSTS/$name/root/etc/ssh"
      awk -v who="$(host_ip "$i"),$name" '{ print who, $1, $2 }' "$pub" >>"$tmp"
    done
  done
  chmod 644 "$tmp"
  mv "$tmp" "$KNOWN_HOSTS"
}

# names of the hosts that have a folder, sorted by index
existing_hosts() {
  [ -d "$HOSTS" ] || return 0
  local d
  for d in "$HOSTS"/*/; do
    [ -d "$d" ] && basename "$d"
  done | sort -V
}

running_pid() {  # prints the wrapper pid of a running host, fails when it is not running
  local name=$1 pid
  pid=$(cat "$HOSTS/$name/nspawn.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- " _run $name " || return 1
  echo "$pid"
}

# writable cgroup hierarchies that systemd uses to track processes
cgroup_roots() {
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    echo /sys/fs/cgroup                                                      # pure v2
  else
    if [ -d /sys/fs/cgroup/systemd ]; then echo /sys/fs/cgroup/systemd; fi    # v1 name=systemd
    if [ -f /sys/fs/cgroup/unified/cgroup.procs ]; then echo /sys/fs/cgroup/unified; fi  # hybrid
  fi
}

scope_pids() {  # every process left in a host's cgroup scope
  local name=$1 h
  for h in $(cgroup_roots); do
    [ -d "$h/machine.slice/machine-$name.scope" ] || continue
    find "$h/machine.slice/machine-$name.scope" -name cgroup.procs -exec cat {} + 2>/dev/null || true
  done | sort -un
}

umount_under() {  # unmount everything at or below a folder, deepest first
  local dir=$1 m
  awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r \
    | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
}

remove_tree() {  # rm -rf that never follows a mount into another file system
  local dir=$1
  [ -e "$dir" ] || return 0
  umount_under "$dir"
  if awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { found = 1 } END { exit !found }' /proc/mounts; then
    die "$dir still has mounts below it; not deleting it"
  fi
  rm -rf --one-file-system "$dir"
}

set_sysctl() {  # set_sysctl net/ipv4/conf/IF/forwarding 0 (path form: interface names may hold dots)
  if [ -w "/proc/sys/$1" ]; then echo "$2" >"/proc/sys/$1"; fi
}

# ---- deps ------------------------------------------------------------------------------
cmd_deps() {
  local missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
  { command -v ssh && command -v ssh-keygen; } >/dev/null || missing+=(openssh-client)
  command -v ip >/dev/null || missing+=(iproute2)
  grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null \
    || die "the kernel has no overlay file system"
  if ((${#missing[@]} == 0)); then
    echo "    debootstrap, systemd-nspawn, ssh: present"
    return 0
  fi
  log "installing ${missing[*]} (note: systemd-container may upgrade this machine's systemd packages)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
    apt-get update -qq
  fi
  mkdir -p "$WORK"
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$WORK/apt.log" 2>&1; then
    tail -n 20 "$WORK/apt.log" >&2
    die "apt-get install ${missing[*]} failed (full log: $WORK/apt.log)"
  fi
}

# ---- base rootfs -----------------------------------------------------------------------
detect_mirror() {  # the Debian mirror this machine's apt already uses for $SUITE
  if [ -n "${TESTHOSTS_MIRROR:-}" ]; then
    echo "$TESTHOSTS_MIRROR"
    return 0
  fi
  local m
  # shellcheck disable=SC2016  # apt's own $(FIELD) format, not the shell's
  m=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null \
    | awk -v s="$SUITE" '$2 == s { print $1; exit }')
  if [ -z "$m" ]; then  # no index downloaded yet: read the sources themselves
    m=$( { cat /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } | awk -v s="$SUITE" '
        /^[ \t]*$/ { if (ok && uri != "" && on) { print uri; exit } ok = 0; uri = ""; on = 1; next }
        BEGIN { on = 1 }
        tolower($1) == "uris:" { uri = $2 }
        tolower($1) == "enabled:" && tolower($2) == "no" { on = 0 }
        tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == s) ok = 1 }
        END { if (ok && uri != "" && on) print uri }' | head -1)
  fi
  if [ -z "$m" ]; then
    m=$( { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true; } \
      | sed 's/\[[^]]*\]//' | awk -v s="$SUITE" '$1 == "deb" && $3 == s { print $2; exit }')
  fi
  [ -n "$m" ] || return 1
  echo "${m%/}"
}

customise_base() {
  local root=$1
  rm -f "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin
  # every host gets its own machine-id, host name, ssh host keys and root key when it is created
  : >"$root/etc/machine-id"
  if [ ! -L "$root/var/lib/dbus/machine-id" ]; then rm -f "$root/var/lib/dbus/machine-id"; fi
  echo localhost >"$root/etc/hostname"
  echo 'LANG=C.UTF-8' >"$root/etc/default/locale"  # as an installed Debian has (pam_env reads it)
  rm -f "$root"/etc/ssh/ssh_host_*
  # no DNS: the hosts have no route out; a lookup fails at once instead of timing out
  rm -f "$root/etc/resolv.conf"
  echo '# LLF test host: no DNS, no route out (see tests/testhosts/README.md)' >"$root/etc/resolv.conf"
  # nginx and Prometheus' parts are there because hosts cannot download them, but off
  # until a role enables them; apt's timers would only fail (no network) and take the
  # dpkg lock under Ansible
  systemctl --root="$root" --quiet disable nginx.service apt-daily.timer apt-daily-upgrade.timer \
    prometheus.service prometheus-alertmanager.service prometheus-node-exporter.service \
    prometheus-nginx-exporter.service
  systemctl --root="$root" --quiet is-enabled nftables.service >/dev/null 2>&1 \
    && systemctl --root="$root" --quiet disable nftables.service
  return 0
}

cmd_base() {
  local want="format=$BASE_FORMAT suite=$SUITE packages=$PKGS" mirror t0
  mkdir -p "$WORK"
  if [ -x "$BASE/lib/systemd/systemd" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
    echo "    cached in $BASE ($(du -sh "$BASE" | cut -f1))"
    return 0
  fi
  if [ -n "$(existing_hosts)" ]; then
    die "the base in $BASE is missing or out of date (package list or format changed) but hosts use it: make testhosts-down first"
  fi
  command -v debootstrap >/dev/null || cmd_deps
  mirror=$(detect_mirror) || die "no Debian mirror for '$SUITE' in apt's sources; set TESTHOSTS_MIRROR"
  log "debootstrap $SUITE (minbase + ${PKGS//,/ }) from $mirror into $BASE; about 1-2 min, log in $WORK/debootstrap.log"
  t0=$(now)
  remove_tree "$BASE.tmp"
  if ! debootstrap --variant=minbase --components=main --include="$PKGS" \
      "$SUITE" "$BASE.tmp" "$mirror" >"$WORK/debootstrap.log" 2>&1; then
    tail -n 20 "$WORK/debootstrap.log" >&2
    umount_under "$BASE.tmp"
    die "debootstrap failed (full log: $WORK/debootstrap.log)"
  fi
  umount_under "$BASE.tmp"
  customise_base "$BASE.tmp"
  remove_tree "$BASE"
  mv "$BASE.tmp" "$BASE"
  echo "$want" >"$STAMP"
  echo "    built in $(since "$t0"): $(du -sh "$BASE" | cut -f1)"
}

# ---- network ---------------------------------------------------------------------------
net_up() {
  if ! ip link show "$BR" >/dev/null 2>&1; then
    if ip -4 -o addr show | awk '{ print $4 }' | grep -q "^$NET\."; then
      die "another interface already has an address in $NET.0/24: set TESTHOSTS_BRIDGE_IP"
    fi
    ip link add "$BR" type bridge stp_state 0 forward_delay 0
  fi
  set_sysctl "net/ipv6/conf/$BR/disable_ipv6" 1
  # packets from the hosts that arrive on the bridge are never routed onwards, even if
  # this machine forwards elsewhere (nothing here enables forwarding or NAT)
  set_sysctl "net/ipv4/conf/$BR/forwarding" 0
  ip addr replace "$BR_IP/24" dev "$BR"
  ip link set "$BR" up
}

net_host() {  # the host's own network namespace, with eth0 on the bridge
  local name=$1 ip=$2
  [ -e "/run/netns/$name" ] || ip netns add "$name"
  if ! ip link show "ve-$name" >/dev/null 2>&1; then
    ip -n "$name" link del eth0 2>/dev/null || true
    ip link add "ve-$name" type veth peer name eth0 netns "$name"
  fi
  set_sysctl "net/ipv6/conf/ve-$name/disable_ipv6" 1
  ip link set "ve-$name" master "$BR" up
  ip -n "$name" link set lo up
  ip -n "$name" addr replace "$ip/24" dev eth0
  ip -n "$name" link set eth0 up
  # a default route so that Ansible finds ansible_default_ipv4; it ends at the machine
  ip -n "$name" route replace default via "$BR_IP" dev eth0
}

# ---- hosts -----------------------------------------------------------------------------
prepare_host() {  # overlay over the base plus the host's own identity (kept across reboots)
  local name=$1 ip=$2 d=$HOSTS/$1
  mkdir -p "$d/upper" "$d/work" "$d/root"
  echo "$ip" >"$d/ip"
  mountpoint -q "$d/root" || mount -t overlay "llf-testhost-$name" \
    -o "lowerdir=$BASE,upperdir=$d/upper,workdir=$d/work" "$d/root"
  if [ ! -e "$d/created" ]; then
    tr -d '-' </proc/sys/kernel/random/uuid >"$d/root/etc/machine-id"
    echo "$name" >"$d/root/etc/hostname"
    ssh-keygen -q -A -f "$d/root" >/dev/null
    date -Is >"$d/created"
  fi
  install -d -m 700 "$d/root/root/.ssh"
  install -m 600 "$KEY.pub" "$d/root/root/.ssh/authorized_keys"
}

write_etc_hosts() {  # every host resolves every other host by name
  local n=$1 i name content
  content=$'127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n'
  for ((i = 1; i <= n; i++)); do content+="$(host_ip "$i")"$'\t'"$(host_name "$i")"$'\n'; done
  for ((i = 1; i <= n; i++)); do
    name=$(host_name "$i")
    if mountpoint -q "$HOSTS/$name/root"; then printf '%s' "$content" >"$HOSTS/$name/root/etc/hosts"; fi
  done
}

launch_host() {
  local name=$1 d=$HOSTS/$1 i
  rm -f "$d/nspawn.pid"
  # setsid: the host outlives this script and make; fd 9 is our lock
  setsid "$SELF" _run "$name" "$d" >>"$d/console.log" 2>&1 </dev/null 9>&- &
  for i in $(seq 50); do
    [ -s "$d/nspawn.pid" ] && return 0
    sleep 0.1
  done
  die "$name: the nspawn wrapper did not start (see $d/console.log)"
}

# The wrapper that runs under setsid: it puts itself into the host's own cgroup scope
# (no systemd on this machine creates one; without it all hosts share a cgroup and
# service restarts fail with status=219/CGROUP), then runs systemd-nspawn, again when
# the guest reboots (exit 133). SIGTERM to it is a clean poweroff of the guest.
cmd__run() {
  local name=$1 d=$2 h rc stop=0 child=
  for h in $(cgroup_roots); do
    mkdir -p "$h/machine.slice/machine-$name.scope"
    echo $$ >"$h/machine.slice/machine-$name.scope/cgroup.procs"
  done
  echo $$ >"$d/nspawn.pid"
  trap 'stop=1; if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; fi' TERM INT HUP
  while :; do
    echo "=== $(date -Is) booting $name"
    # --register=no --keep-unit: no machined/system bus on this machine;
    # --private-network + the namespace: the guest sees only its own eth0 (also in /sys)
    systemd-nspawn --quiet --boot --directory="$d/root" --machine="$name" \
      --register=no --keep-unit --private-network --network-namespace-path="/run/netns/$name" \
      --console=read-only --link-journal=no --resolv-conf=off &
    child=$!
    rc=0
    while kill -0 "$child" 2>/dev/null; do
      rc=0
      wait "$child" || rc=$?
    done
    echo "=== $(date -Is) $name: systemd-nspawn exited with $rc"
    if [ "$stop" = 0 ] && [ "$rc" = 133 ]; then continue; fi
    break
  done
}

wait_host() {  # wait_host NAME IP T0 LABEL: ssh, then the end of the boot (T0 empty: no timing)
  local name=$1 ip=$2 t0=$3 label=$4 t_ssh state failed deadline
  deadline=$(($(date +%s) + BOOT_TIMEOUT))
  until ssh_host "$ip" true 2>/dev/null; do
    if ! running_pid "$name" >/dev/null; then
      tail -n 20 "$HOSTS/$name/console.log" >&2
      echo "    $name: systemd-nspawn exited (see $HOSTS/$name/console.log)" >&2
      return 1
    fi
    if (($(date +%s) > deadline)); then
      tail -n 20 "$HOSTS/$name/console.log" >&2
      echo "    $name: no ssh at $ip after ${BOOT_TIMEOUT}s" >&2
      return 1
    fi
    sleep 0.2
  done
  if [ -n "$t0" ]; then t_ssh=$(since "$t0"); fi
  state=$(ssh_host "$ip" timeout 90 systemctl is-system-running --wait 2>/dev/null) || true
  failed=$(ssh_host "$ip" systemctl list-units --failed --plain --no-legend 2>/dev/null \
    | awk '{ print $1 }' | paste -sd' ') || true
  if [ -n "$t0" ]; then
    label+=": ssh after $t_ssh, boot done after $(since "$t0")"
  fi
  printf '    %-10s %-12s %s: %s%s\n' "$name" "$ip" "$label" "${state:-unknown}" "${failed:+ (failed: $failed)}"
  [[ $state == running || $state == degraded ]]
}

kill_scope() {  # SIGKILL every process in a host's cgroup scope, wait until it is empty
  local name=$1 pids h i
  for ((i = 0; i < 50; i++)); do
    pids=$(scope_pids "$name")
    [ -n "$pids" ] || return 0
    for h in $(cgroup_roots); do
      if [ -w "$h/machine.slice/machine-$name.scope/cgroup.kill" ]; then
        echo 1 >"$h/machine.slice/machine-$name.scope/cgroup.kill" 2>/dev/null || true
      fi
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
  done
  die "$name: processes are left in its cgroup: $(scope_pids "$name" | paste -sd' ')"
}

down_host() {  # down_host NAME [signalled]: power off (unless already asked), then remove
  local name=$1 d=$HOSTS/$1 pid h t0 i
  t0=$(now)
  if pid=$(running_pid "$name"); then
    # the wrapper forwards SIGTERM: nspawn powers the guest off cleanly
    if [ "${2:-}" != signalled ]; then kill -TERM "$pid"; fi
    for ((i = 0; i < STOP_TIMEOUT * 5; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "    $name: no clean poweroff after ${STOP_TIMEOUT}s, killing it" >&2
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
  fi
  kill_scope "$name"  # whatever is left (a hung guest, a wrapper killed from outside)
  for h in $(cgroup_roots); do
    if [ -d "$h/machine.slice/machine-$name.scope" ]; then
      find "$h/machine.slice/machine-$name.scope" -depth -type d -exec rmdir {} + 2>/dev/null || true
    fi
    rmdir "$h/machine.slice" 2>/dev/null || true
  done
  if mountpoint -q "$d/root"; then  # nspawn's lock on the directory, left if it was killed
    rm -f "/run/systemd/nspawn/locks/inode-$(stat -c %d:%i "$d/root")"
  fi
  umount_under "$d/root"
  # the veth first: deleting the namespace removes it too, but later (the kernel tears
  # namespaces down in the background), so "show, then del" could race with it
  if ip link show "ve-$name" >/dev/null 2>&1 && ! ip link del "ve-$name" 2>/dev/null; then
    ! ip link show "ve-$name" >/dev/null 2>&1 || die "$name: could not delete ve-$name"
  fi
  if [ -e "/run/netns/$name" ]; then ip netns del "$name"; fi
  remove_tree "$d"
  rm -rf "/run/systemd/nspawn/propagate/$name"
  echo "    $name: down in $(since "$t0")"
}

write_inventory() {
  local n=$1 i tmp name
  mkdir -p "$INVENTORY_DIR/group_vars/all"
  tmp=$(mktemp "$INVENTORY_DIR/.hosts.yml.XXXXXX")
  {
    echo "# Written by tests/testhosts/testhosts.sh (make testhosts-up N=$n): do not edit."
    echo "# Removed by make testhosts-down. Hosts: see make testhosts-status."
    echo "all:"
    echo "  children:"
    emit_group llf_servers 1 $((n > 1 ? n - 1 : 1))
    # the gateway host runs Prometheus and Alertmanager too (inventories/lab's shape)
    # and Open WebUI, behind the gateway
    if ((n >= 2)); then
      emit_group llf_gateway "$n" "$n"; emit_group llf_monitoring "$n" "$n"; emit_group llf_webui "$n" "$n"
    fi
  } >"$tmp"
  chmod 644 "$tmp"
  mv "$tmp" "$INVENTORY_DIR/hosts.yml"
  {
    echo "# Written by tests/testhosts/testhosts.sh: do not edit."
    echo "# The machine's address on the test hosts' bridge (where it can serve them files)."
    echo "llf_testhosts_controller_ip: $BR_IP"
    echo "# This inventory is the generated test lab: the example lab's published vault"
    echo "# (inventories/lab) may be used here, on these addresses only."
    echo "llf_testhosts_lab: true"
  } >"$INVENTORY_DIR/group_vars/all/testhosts.yml"
  # LLF's settings for these hosts, and a shared API key kept across `up` runs
  cp "$HERE/lab-vars.yml" "$INVENTORY_DIR/group_vars/all/llf.yml"
  if [ ! -s "$INVENTORY_DIR/group_vars/all/secrets.yml" ]; then
    (umask 077 && printf 'llf_testhosts_api_key: "%s"\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
      >"$INVENTORY_DIR/group_vars/all/secrets.yml")
  fi
  # the keys of the gateway clients lab-vars.yml lists (lab-user, webui)
  for name in llf_testhosts_client_key llf_testhosts_webui_key; do
    if ! grep -q "^$name:" "$INVENTORY_DIR/group_vars/all/secrets.yml"; then
      (umask 077 && printf '%s: "%s"\n' "$name" "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
        >>"$INVENTORY_DIR/group_vars/all/secrets.yml")
    fi
  done
}

emit_group() {
  local group=$1 from=$2 to=$3 i
  echo "    $group:"
  echo "      hosts:"
  for ((i = from; i <= to; i++)); do
    echo "        $(host_name "$i"):"
    echo "          ansible_host: $(host_ip "$i")"
    echo "          ansible_user: root"
    echo "          ansible_ssh_private_key_file: '$KEY'"
    echo "          ansible_ssh_common_args: '-o StrictHostKeyChecking=yes -o UserKnownHostsFile=$KNOWN_HOSTS'"
    echo "          ansible_python_interpreter: /usr/bin/python3"
    # each server's threads on a core of its own (two servers share this machine)
    if [ "$group" = llf_servers ]; then
      echo "          llf_server_cpu_threads_bind: \"$(((i - from) % $(nproc)))\""
      echo "          llf_server_model_cpus: {all-minilm-l6-v2: \"$(((i - from) % $(nproc)))\"}"
    fi
  done
}

remove_inventory() {
  rm -rf "$INVENTORY_DIR"
}

# ---- commands --------------------------------------------------------------------------
cmd_up() {
  local n=${1:-3} t_all t0 i name ip pid failed=0
  if ! [[ $n =~ ^[0-9]+$ ]] || ((n < 1)); then die "N must be a number >= 1 (got '$n')"; fi
  host_ip "$n" >/dev/null
  t_all=$(now)
  lock

  log "dependencies"
  t0=$(now)
  cmd_deps
  echo "    took $(since "$t0")"

  log "base rootfs"
  cmd_base

  if [ ! -f "$KEY" ]; then ssh-keygen -q -t ed25519 -N '' -C llf-testhosts -f "$KEY"; fi

  log "network: bridge $BR $BR_IP/24"
  net_up

  for name in $(existing_hosts); do  # hosts above N (an earlier, larger N)
    if [[ $name =~ ^$NAME_PREFIX([0-9]+)$ ]] && ((BASH_REMATCH[1] > n)); then
      log "stopping $name (above N=$n)"
      down_host "$name"
    fi
  done

  log "hosts 1..$n"
  local -a to_boot=() pids=() labels=()
  for ((i = 1; i <= n; i++)); do
    name=$(host_name "$i")
    ip=$(host_ip "$i")
    if pid=$(running_pid "$name"); then
      labels[i]="already running (pid $pid)"
    else
      if [ -n "$(scope_pids "$name")" ]; then
        echo "    $name: processes left without their wrapper: killing them, then booting again"
        kill_scope "$name"
      fi
      prepare_host "$name" "$ip"
      net_host "$name" "$ip"
      to_boot+=("$i")
      labels[i]=$([ -e "$HOSTS/$name/booted" ] && echo "powered on again (disk kept)" || echo booted)
    fi
    # a new key (deleted TESTHOSTS_DIR key) reaches running hosts too
    install -m 600 "$KEY.pub" "$HOSTS/$name/root/root/.ssh/authorized_keys"
  done
  write_etc_hosts "$n"
  write_known_hosts "$n"
  local -a t_start=()
  for i in "${to_boot[@]}"; do
    t_start[i]=$(now)
    launch_host "$(host_name "$i")"
    touch "$HOSTS/$(host_name "$i")/booted"
  done
  local out
  out=$(mktemp -d)
  for ((i = 1; i <= n; i++)); do  # in parallel, reported in order
    wait_host "$(host_name "$i")" "$(host_ip "$i")" "${t_start[i]:-}" "${labels[i]}" >"$out/$i" 2>&1 &
    pids[i]=$!
  done
  for ((i = 1; i <= n; i++)); do
    wait "${pids[i]}" || failed=1
    cat "$out/$i"
  done
  rm -rf "$out"
  ((failed == 0)) || die "some hosts did not boot: make testhosts-status; make testhosts-down"

  write_inventory "$n"
  log "$n host(s) up in $(since "$t_all")"
  echo "    inventory: $INVENTORY_DIR/hosts.yml"
  echo "    ssh:       ssh -i $KEY -o UserKnownHostsFile=$KNOWN_HOSTS root@$(host_ip 1)"
}

remove_run_dirs() {  # what `ip netns add` and systemd-nspawn made, once nothing else uses it
  if [ -d /run/netns ] && [ -z "$(ls -A /run/netns)" ]; then
    if mountpoint -q /run/netns; then umount /run/netns 2>/dev/null || true; fi
    rmdir /run/netns 2>/dev/null || true
  fi
  rmdir /run/systemd/nspawn/propagate /run/systemd/nspawn/locks /run/systemd/nspawn 2>/dev/null || true
}

cmd_down() {
  local t0 name names pid
  t0=$(now)
  lock
  # the hosts with a folder, plus leftovers of an interrupted run (our prefix only)
  names=$( { existing_hosts
             ls /run/netns 2>/dev/null || true
             ip -o link show | awk -F': ' '{ sub(/@.*/, "", $2); sub(/^ve-/, "", $2); print $2 }'
             for h in $(cgroup_roots); do
               find "$h/machine.slice" -maxdepth 1 -name 'machine-*.scope' -printf '%f\n' 2>/dev/null \
                 | sed 's/^machine-//; s/\.scope$//' || true
             done
           } | grep -E "^${NAME_PREFIX}[0-9]+$" | sort -uV || true)
  if [ -z "$names" ] && ! ip link show "$BR" >/dev/null 2>&1; then
    remove_inventory
    remove_run_dirs
    log "no test hosts: nothing to do"
    return 0
  fi
  log "powering off and removing: $(paste -sd' ' <<<"$names")"
  for name in $names; do  # all power off at once
    if pid=$(running_pid "$name"); then kill -TERM "$pid"; fi
  done
  for name in $names; do down_host "$name" signalled; done
  rmdir "$HOSTS" 2>/dev/null || true
  if ip link show "$BR" >/dev/null 2>&1; then ip link del "$BR"; fi
  remove_run_dirs
  remove_inventory
  rm -f "$KNOWN_HOSTS"
  log "down in $(since "$t0") (base kept in $BASE; make testhosts-clean deletes it)"
}

cmd_status() {
  local name ip pid state any=0
  printf '%-10s %-12s %-8s %-8s %s\n' HOST IP PROCESS PID SYSTEMD
  for name in $(existing_hosts); do
    any=1
    ip=$(cat "$HOSTS/$name/ip" 2>/dev/null || echo '?')
    if pid=$(running_pid "$name"); then
      state=$(ssh_host "$ip" systemctl is-system-running 2>/dev/null) || state=${state:-unreachable}
      printf '%-10s %-12s %-8s %-8s %s\n' "$name" "$ip" running "$pid" "$state"
    elif [ -n "$(scope_pids "$name")" ]; then  # its wrapper was killed: up or down cleans it
      printf '%-10s %-12s %-8s %-8s %s\n' "$name" "$ip" orphaned - -
    else
      printf '%-10s %-12s %-8s %-8s %s\n' "$name" "$ip" stopped - -
    fi
  done
  ((any)) || echo "(no test hosts)"
  echo
  if ip link show "$BR" >/dev/null 2>&1; then
    echo "bridge:    $BR $(ip -4 -o addr show dev "$BR" | awk '{ print $4 }')"
  else
    echo "bridge:    $BR absent"
  fi
  if [ -x "$BASE/lib/systemd/systemd" ]; then
    echo "base:      $BASE ($(du -sh "$BASE" | cut -f1))"
  else
    echo "base:      not built"
  fi
  if [ -f "$INVENTORY_DIR/hosts.yml" ]; then
    echo "inventory: $INVENTORY_DIR/hosts.yml"
  else
    echo "inventory: none"
  fi
}

cmd_check() {  # what a test host must do; exits non-zero on the first kind of failure
  local name ip other out bad=0 fwd
  for name in $(existing_hosts); do
    ip=$(cat "$HOSTS/$name/ip")
    if ! running_pid "$name" >/dev/null; then echo "FAIL $name: not running"; bad=1; continue; fi
    out=$(ssh_host "$ip" systemctl is-system-running 2>&1) || true
    case $out in
      running) echo "ok   $name: systemd running" ;;
      degraded) echo "ok   $name: systemd degraded, failed units: $(ssh_host "$ip" systemctl list-units \
        --failed --plain --no-legend | awk '{ print $1 }' | paste -sd' ')" ;;
      *) echo "FAIL $name: systemd $out"; bad=1 ;;
    esac
    if out=$(ssh_host "$ip" 'systemctl restart ssh && systemctl is-active ssh' 2>&1); then
      echo "ok   $name: systemctl restart ssh: $out"
    else
      echo "FAIL $name: systemctl restart ssh: $out"; bad=1
    fi
    for other in $BR_IP $(cat "$HOSTS"/*/ip); do
      [ "$other" != "$ip" ] || continue
      [[ $other == "$NET".* ]] || continue
      if ssh_host "$ip" ping -c1 -W2 "$other" >/dev/null 2>&1; then
        echo "ok   $name: ping $other"
      else
        echo "FAIL $name: ping $other"; bad=1
      fi
    done
    out=$(ssh_host "$ip" 'ip -4 route; ip -6 route show default' 2>&1)
    if [ "$(grep -cv -e "^default via $BR_IP dev eth0" -e "^$NET.0/24 dev eth0 " <<<"$out")" = 0 ]; then
      echo "ok   $name: routes: $(paste -sd';' <<<"$out")"
    else
      echo "FAIL $name: unexpected routes: $(paste -sd';' <<<"$out")"; bad=1
    fi
  done
  fwd=$(cat "/proc/sys/net/ipv4/conf/$BR/forwarding" 2>/dev/null || echo absent)
  if [ "$fwd" = 0 ]; then
    echo "ok   machine: no forwarding from $BR (ip_forward=$(cat /proc/sys/net/ipv4/ip_forward))"
  else
    echo "FAIL machine: $BR forwarding=$fwd"; bad=1
  fi
  return "$bad"
}

cmd_clean() {
  cmd_down
  lock
  log "deleting the cached base and the key in $WORK"
  remove_tree "$BASE.tmp"
  remove_tree "$BASE"
  rm -f "$KEY" "$KEY.pub" "$KNOWN_HOSTS" "$STAMP" "$WORK/debootstrap.log" "$WORK/apt.log" "$WORK/.lock"
  rmdir "$WORK" 2>/dev/null || true
}

validate
cmd=${1:-}
shift || true
case $cmd in
  up | down | status | check | base | deps | clean) need_root ;;&
  up) cmd_up "$@" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  check) cmd_check ;;
  base)
    lock
    cmd_deps
    cmd_base
    ;;
  deps) cmd_deps ;;
  clean) cmd_clean ;;
  _run) cmd__run "$@" ;;
  *) sed -n '2,13p' "$SELF" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
