#!/bin/bash
# run-in-vm.sh 'COMMAND STRING'   |   run-in-vm.sh --prepare
#
# chaos's second kernel for tests: Debian's 6.12 (sch_fq, sch_netem, ifb, veth as modules),
# booted under qemu/TCG (KVM is unusable on the CI machines) from the host's own root.
# --prepare only installs and caches what a run needs (kernel, modules, initramfs, qemu).
# Runs COMMAND as root inside Debian's 6.12 kernel under qemu (TCG), with the
# host / visible read-only (9p) under a writable tmpfs overlay.
# Guest stdout/stderr are copied to this script's stdout/stderr; the exit
# status is the command's exit status (125 = VM/infrastructure failure).
#
# Env knobs:
#   VM_CACHE    cache dir               (default: <script dir>/cache)
#   VM_KPKG     kernel package name      (default: whatever linux-image-6.12-amd64 depends on)
#   VM_MEM      guest RAM                (default: 1G)
#   VM_SMP      guest CPUs               (default: 2)
#   VM_TIMEOUT  seconds before qemu is killed (default: 600)
#   VM_CWD      guest working directory  (default: $PWD if it exists in the guest, else /)
#   VM_KEEP=1   keep the per-run dir (console.log, io/) and print its path
#   VM_DEBUG=1  verbose guest console, copied to stderr
#   VM_NO_INSTALL=1  never apt-get install missing host packages
set -euo pipefail

SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=$(realpath -m "${VM_CACHE:-$SELF_DIR/cache}")
MODS=(sch_fq sch_netem veth ifb cls_bpf)        # loaded for the command
BOOT_MODS=(9pnet_virtio 9p overlay)             # needed to mount the root (deps resolved below)

die() { echo "run-in-vm: $*" >&2; exit 125; }

# ---------------------------------------------------------------- host packages
install_host_deps() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    [ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx switch_root || missing+=(busybox-static)
    command -v depmod >/dev/null || missing+=(kmod)
    command -v cpio >/dev/null || missing+=(cpio)
    command -v xz >/dev/null || missing+=(xz-utils)
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "${VM_NO_INSTALL:-}" = 1 ] && die "missing host packages: ${missing[*]}"
    echo "run-in-vm: installing ${missing[*]}" >&2
    if [[ " ${missing[*]} " == *" qemu-system-x86 "* ]] &&
       ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
        # Same mirror as the main bookworm entry.
        local uri
        uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
        uri=${uri:-http://deb.debian.org/debian}
        cat > /etc/apt/sources.list.d/bookworm-backports.sources <<EOF
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    apt-get update -qq >&2
    # qemu-system-x86 must come from backports (matches the backports qemu-utils).
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -t bookworm-backports "${missing[@]}" >&2
}

# ---------------------------------------------------------------- prepare (once)
# Bump when the initramfs (init, stage2, modules) changes: caches of an older one are rebuilt.
INITRD_VERSION=initrd-2
cache_current() { [ -f "$CACHE/ready" ] && grep -qw "$INITRD_VERSION" "$CACHE/ready"; }

prepare() {
    cache_current && return 0
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9
    cache_current && { exec 9>&-; return 0; }
    install_host_deps

    local kpkg=${VM_KPKG:-}
    if [ -z "$kpkg" ]; then
        kpkg=$(apt-cache depends linux-image-6.12-amd64 2>/dev/null |
               awk '/Depends: linux-image-6\.12\.[0-9]+\+deb12[0-9.]*-amd64$/ {print $2; exit}')
        if [ -z "$kpkg" ]; then
            apt-get update -qq >&2
            kpkg=$(apt-cache depends linux-image-6.12-amd64 |
                   awk '/Depends: linux-image-6\.12\.[0-9]+\+deb12[0-9.]*-amd64$/ {print $2; exit}')
        fi
    fi
    [ -n "$kpkg" ] || die "cannot find a linux-image-6.12.*-amd64 package"
    local kver=${kpkg#linux-image-}
    echo "run-in-vm: preparing $kpkg in $CACHE" >&2

    rm -rf "$CACHE/dl" "$CACHE/kernel" "$CACHE/initrd.d"
    mkdir -p "$CACHE/dl"
    chmod 777 "$CACHE/dl"            # lets apt's _apt user write there (avoids a warning)
    (cd "$CACHE/dl" && apt-get download -q "$kpkg" >&2)
    dpkg-deb -x "$CACHE"/dl/"$kpkg"_*.deb "$CACHE/kernel"
    depmod -b "$CACHE/kernel" "$kver"
    rm -rf "$CACHE/dl"

    # --- initramfs: static busybox + decompressed boot/test modules + /init
    local d=$CACHE/initrd.d
    mkdir -p "$d"/{bin,dev,proc,sys,lower,rw,newroot,mods}
    cp /bin/busybox "$d/bin/busybox"
    for a in $(/bin/busybox --list); do
        [ "$a" = busybox ] || ln -sf busybox "$d/bin/$a"
    done
    local m f name seen=" " order=()
    for m in "${BOOT_MODS[@]}" "${MODS[@]}"; do
        while read -r _ f _; do
            name=$(basename "$f"); name=${name%.xz}; name=${name%.zst}; name=${name%.ko}
            [[ "$seen" == *" $name "* ]] && continue
            seen+="$name "
            case "$f" in
                *.xz)  xz -dc "$f" > "$d/mods/$name.ko" ;;
                *.zst) zstd -qdc "$f" > "$d/mods/$name.ko" ;;
                *)     cp "$f" "$d/mods/$name.ko" ;;
            esac
            order+=("$name")
        done < <(modprobe -d "$CACHE/kernel" -S "$kver" --show-depends "$m" | grep '^insmod ')
    done
    printf '%s\n' "${order[@]}" > "$d/mods/order"
    echo "$kver" > "$d/kver"
    cat > "$d/init" <<'INIT'
#!/bin/sh
# PID 1 in the initramfs: mount host / (9p, ro) + tmpfs overlay, switch_root.
export PATH=/bin
t() { [ -n "$vmtrace" ] && echo "T $(cut -d' ' -f1 /proc/uptime) $*" > /dev/console; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
t init
for m in $(cat /mods/order); do
    args=
    [ "$m" = ifb ] && args=numifbs=0        # like Debian's modprobe.d: no auto ifb0/ifb1
    insmod /mods/$m.ko $args || echo "vm-init: insmod $m failed" >&2
    t "insmod $m"
done
t modules loaded
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower ||
    { echo "vm-init: 9p root mount failed" >&2; poweroff -f; }
mount -t tmpfs -o mode=755 rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot ||
    { echo "vm-init: overlay mount failed" >&2; poweroff -f; }
t root mounted
R=/newroot
mount --move /dev $R/dev
mount --move /proc $R/proc
mount --move /sys $R/sys
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 shm $R/dev/shm
# /tmp stays the overlay's (host /tmp underneath, writes in tmpfs): a checkout or test binary
# under the host's /tmp must be visible in the guest.
mount -t tmpfs -o mode=755 run $R/run
mount -t bpf -o mode=700 bpf $R/sys/fs/bpf
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs $R/sys/kernel/tracing 2>/dev/null
# Real module tree for on-demand modprobe (kmod in the guest reads .ko.xz).
KVER=$(cat /kver)
mkdir -p $R/lib/modules/$KVER
mount --bind $R$(cat /cachedir)/kernel/lib/modules/$KVER $R/lib/modules/$KVER ||
    echo "vm-init: no module tree for modprobe" >&2
mkdir -p $R/run/vm/io
cp /bin/busybox $R/run/vm/busybox
cp /stage2 $R/run/vm/stage2
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 vmio $R/run/vm/io ||
    { echo "vm-init: io mount failed" >&2; poweroff -f; }
t switch_root
exec switch_root $R /run/vm/busybox sh /run/vm/stage2
INIT
    cat > "$d/stage2" <<'STAGE2'
# PID 1 after switch_root: run the command, report, power off.
B=/run/vm/busybox
IO=/run/vm/io
t() { [ -n "$vmtrace" ] && echo "T $($B cut -d' ' -f1 /proc/uptime) $*" > /dev/console; }
t stage2
$B hostname vm
$B ip link set lo up
. $IO/env
cd "$VM_CWD" 2>/dev/null || cd /
if [ -x /bin/bash ]; then SH=/bin/bash; else SH=/bin/sh; fi
t cmd start
$SH $IO/cmd </dev/null >$IO/stdout 2>$IO/stderr
echo $? > $IO/rc.tmp
t cmd done
$B mv $IO/rc.tmp $IO/rc
$B sync
$B poweroff -f
STAGE2
    chmod +x "$d/init"
    echo "$CACHE" > "$d/cachedir"
    (cd "$d" && find . | cpio -o -H newc --quiet) > "$CACHE/initrd.img"
    cp "$CACHE/kernel/boot/vmlinuz-$kver" "$CACHE/vmlinuz"
    echo "$kver $INITRD_VERSION" > "$CACHE/ready"
    exec 9>&-
}

# ---------------------------------------------------------------- run
[ $# -ge 1 ] || { echo "usage: $0 'command string' | --prepare" >&2; exit 2; }
if [ "$1" = --prepare ]; then
    prepare
    exit 0
fi
CMD=$*
prepare

RUN=$(mktemp -d /tmp/run-in-vm.XXXXXX)
mkdir "$RUN/io"
QPID=
cleanup() {
    [ -n "$QPID" ] && kill "$QPID" 2>/dev/null || true
    if [ "${VM_KEEP:-}" = 1 ]; then echo "run-in-vm: kept $RUN" >&2; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

printf '%s\n' "$CMD" > "$RUN/io/cmd"
{
    printf 'export PATH=%q\n' "$PATH"
    printf 'export HOME=%q\n' "${HOME:-/root}"
    printf 'export TERM=dumb LANG=C.UTF-8\n'
    printf 'VM_CWD=%q\n' "${VM_CWD:-$PWD}"
} > "$RUN/io/env"

if [ "${VM_DEBUG:-}" = 1 ]; then
    KARGS="console=ttyS0 loglevel=7"
else
    KARGS="console=ttyS0 quiet loglevel=1"
fi
[ "${VM_TRACE:-}" = 1 ] && KARGS+=" vmtrace=1"
KARGS+="${VM_KARGS:+ $VM_KARGS}"
KARGS+=" panic=-1 rdinit=/init mitigations=off no_timer_check 8250.nr_uarts=1 random.trust_cpu=on"

timeout -k 5 "${VM_TIMEOUT:-600}" qemu-system-x86_64 \
    -M q35 -accel tcg -cpu max -smp "${VM_SMP:-2}" -m "${VM_MEM:-1G}" \
    -nodefaults -no-user-config -display none -no-reboot \
    -kernel "${VM_KERNEL:-$CACHE/vmlinuz}" -initrd "$CACHE/initrd.img" -append "$KARGS" \
    -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
    -fsdev local,id=vmio,path="$RUN/io",security_model=none,multidevs=remap \
    -device virtio-9p-pci,fsdev=vmio,mount_tag=vmio \
    -serial file:"$RUN/console.log" \
    ${VM_QEMU_ARGS:-} \
    </dev/null >"$RUN/qemu.log" 2>&1 &
QPID=$!
QRC=0
wait "$QPID" || QRC=$?
QPID=

[ "${VM_DEBUG:-}" = 1 ] || [ "${VM_TRACE:-}" = 1 ] && cat "$RUN/console.log" >&2
[ -f "$RUN/io/stdout" ] && cat "$RUN/io/stdout"
[ -f "$RUN/io/stderr" ] && cat "$RUN/io/stderr" >&2
if [ -f "$RUN/io/rc" ]; then
    exit "$(cat "$RUN/io/rc")"
fi
echo "run-in-vm: no exit status from guest (qemu rc=$QRC); console:" >&2
tail -n 40 "$RUN/console.log" >&2 || true
cat "$RUN/qemu.log" >&2 || true
exit 125
