#!/usr/bin/env bash
# Ironworks developer entry point: every step a fresh machine needs, then the command.
#
#   ./dev.sh serve [ARGS...]   set up, then run `ironworks serve` (SQLite, fake-hardware, 127.0.0.1:6385)
#   ./dev.sh test  [ARGS...]   set up (system packages, venv), then lint, type-check and run every test tier
#   ./dev.sh setup             set up only
#
# Environment: VENV (default .venv; with CI=true a venv kept in $IRONWORKS_VENV_CACHE, see below),
# PYTHON (default python3, must be >= 3.11),
# IRONWORKS_TEST_PG_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/test).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
# The files whose change means "install the dependencies again".
DEPS_FILES=(pyproject.toml examples/vendor_manager/pyproject.toml)
if [ -z "${VENV:-}" ]; then
    if [ "${CI:-}" = true ]; then
        # CI runs in a fresh clone each time: its venv lives outside the clone, keyed by the dependency
        # files, so a clone reuses dependencies already installed for the same files (and an outage of
        # the package registry cannot fail a run whose dependencies did not change). Changed files get a
        # new venv, installed from scratch. The project itself is installed from this tree every run.
        VENV=${IRONWORKS_VENV_CACHE:-/var/cache/ironworks-tests/venvs}/$(cat "${DEPS_FILES[@]}" | sha256sum | cut -c1-16)
    else
        VENV=.venv
    fi
fi

# Debian packages the test tiers need (none of them for the plain service).
SYSTEM_PACKAGES=(postgresql-client ipmitool
    # the virtual lab (tests/lab): TCG VMs under libvirt inside a network namespace, BMC emulators;
    # libvirt-dev, pkg-config and gcc build libvirt-python (for sushy-tools' libvirt driver and VirtualBMC)
    qemu-system-x86 qemu-utils ovmf ipxe-qemu libvirt-daemon-system libvirt-clients libvirt-dev pkg-config gcc
    iproute2
    # the agent's disk work (tests/integration/test_agent_*.py): sfdisk, config drive ISOs, erase, burn-in
    fdisk genisoimage dosfstools hdparm nvme-cli stress-ng fio openssl passwd
    # network boot (tests/e2e, tests/integration/test_netboot_*.py): dnsmasq's binary without its system
    # service, boot loaders served over TFTP/HTTP, and the ramdisk/ISO builder's tools
    dnsmasq-base ipxe pxelinux syslinux-common isolinux grub-efi-amd64-bin grub-pc-bin mtools xorriso
    busybox-static cpio zstd kmod udhcpc
    # the e2e test disk image (tests/e2e/images.py): syslinux --install on the image file, GRUB's
    # grub-mkstandalone (grub-common); mkfs.vfat, mtools and qemu-img come with the packages above
    syslinux grub-common
    # the rescue test (tests/integration/test_ramdisk_rescue.py) logs in to the ramdisk's sshd with ssh
    openssh-client)

log() { printf '[dev.sh] %s\n' "$*" >&2; }

system_packages() {
    local missing=()
    for p in "${SYSTEM_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        log "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"; exit 1
    fi
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

venv() {
    local extra=${1:-}
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        log "$PYTHON is $("$PYTHON" --version 2>&1); Ironworks needs Python 3.11 or newer (set PYTHON=)"; exit 1
    fi
    [ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
    [ "$VENV" = .venv ] || ln -sfn "$VENV" .venv  # `.venv/bin/...` works in every checkout
    # reinstall the dependencies only when the files that name them changed
    local stamp="$VENV/.ironworks-installed$extra" want
    want=$(cat "${DEPS_FILES[@]}" | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        log "installing Ironworks${extra:+ with $extra} and its dependencies into $VENV"
        pip_quiet install -q --upgrade pip || true  # an older pip still works
        pip_quiet install -q -e ".${extra}" || {
            log "installing the dependencies failed (pip's messages above): is the package registry reachable?"
            exit 1
        }
        if [ -n "$extra" ]; then  # the tests run the real agent with the example vendor hardware manager
            pip_quiet install -q -e examples/vendor_manager || { log "installing examples/vendor_manager failed"; exit 1; }
        fi
        echo "$want" > "$stamp"
    fi
    # the project (and the example) from THIS tree: a venv kept for CI was installed from another clone
    if [ "$(cat "$VENV/.ironworks-source" 2>/dev/null)" != "$PWD" ]; then
        pip_quiet install -q --no-deps -e . || { log "installing Ironworks from $PWD failed"; exit 1; }
        if [ -n "$extra" ]; then
            pip_quiet install -q --no-deps -e examples/vendor_manager ||
                { log "installing examples/vendor_manager from $PWD failed"; exit 1; }
        fi
        echo "$PWD" > "$VENV/.ironworks-source"
    fi
    # -P: not from the current directory, so the check imports the installed package, not ./ironworks
    "$VENV/bin/python" -P -c 'import ironworks, sushy, fastapi' ||
        { log "the venv $VENV cannot import Ironworks or its dependencies"; exit 1; }
}

pip_quiet() {
    # pip without its warnings and blank lines, keeping pip's own exit status
    local out rc=0
    out=$("$VENV/bin/python" -m pip "$@" 2>&1) || rc=$?
    printf '%s\n' "$out" | grep -v -e WARNING -e '^\s*$' >&2 || true
    return "$rc"
}

postgres_up() {
    # the scale-out store the DB tests run against; these machines run it on 127.0.0.1:5432
    if pg_isready -q -h 127.0.0.1 -p 5432; then return 0; fi
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        log "starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    fi
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && return 0; sleep 1; done
    log "PostgreSQL is not reachable on 127.0.0.1:5432; the PostgreSQL tests need it"; exit 1
}

cmd=${1:-}; shift || true
case "$cmd" in
    serve)
        venv ""
        exec "$VENV/bin/ironworks" serve "$@"
        ;;
    setup)
        system_packages; venv "[test]"
        ;;
    test)
        system_packages; venv "[test]"; postgres_up
        log "ruff"; "$VENV/bin/ruff" check ironworks tests bench
        "$VENV/bin/ruff" format --check ironworks tests bench
        log "mypy"; "$VENV/bin/mypy"
        log "state diagram is current"; "$VENV/bin/python" -m ironworks.tools.statedoc --check
        log "pytest"; exec "$VENV/bin/pytest" -p no:cacheprovider "$@"
        ;;
    *)
        sed -n '2,10p' "$0"; exit 2
        ;;
esac
