#!/bin/sh
# /init of the Ironworks utility ramdisk (busybox sh as PID 1; the root file system is the initramfs).
#
# Kernel command line keys read here (the agent reads its own ipa-* keys from /proc/cmdline):
#   ironworks-debug-shell=1     a root shell on the console once the agent has stopped for good
#   ironworks-modules=a,b       extra kernel modules to load
#   ironworks-agent-restarts=N  how often a failed agent is started again (default 10; 0 = never)
#   ironworks-dhcp-wait=S       seconds to wait for a first DHCP lease before starting the agent (default 30)
#   ironworks-netconfig-wait=S  seconds to wait for a CD/config drive holding network_data.json (default 0;
#                               a USB virtual CD can appear late); read by ironworks.agent.netconfig
#   console=DEV[,BAUD]          (the kernel's) after a finalized rescue each console gets a login prompt
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH HOME=/root TERM=linux LANG=C.UTF-8
say() { echo "ironworks-init: $*"; }

mount -t proc -o nosuid,noexec,nodev proc /proc
mount -t sysfs -o nosuid,noexec,nodev sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
mkdir -p /dev/pts /dev/shm /run /tmp /var/log /var/lib/dhcp
mount -t devpts -o nosuid,noexec,gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
[ -d /sys/firmware/efi/efivars ] && mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
hostname ironworks-ramdisk
FIRMWARE=bios; [ -d /sys/firmware/efi ] && FIRMWARE=uefi
say "started (kernel $(uname -r), firmware $FIRMWARE, uptime $(cut -d' ' -f1 /proc/uptime)s)"

DEBUG_SHELL=0; EXTRA_MODULES=""; RESTARTS=10; DHCP_WAIT=30; CONSOLES=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        ironworks-debug-shell=*|ironworks_debug_shell=*) DEBUG_SHELL=${arg#*=} ;;
        ironworks-debug-shell|ironworks_debug_shell) DEBUG_SHELL=1 ;;
        ironworks-modules=*|ironworks_modules=*) EXTRA_MODULES=$(echo "${arg#*=}" | tr ',' ' ') ;;
        ironworks-agent-restarts=*|ironworks_agent_restarts=*) RESTARTS=${arg#*=} ;;
        ironworks-dhcp-wait=*|ironworks_dhcp_wait=*) DHCP_WAIT=${arg#*=} ;;
        console=*) CONSOLES="$CONSOLES ${arg#*=}" ;;
        ipa-agent-token=*|ipa_agent_token=*) ;;  # a secret: never echoed
        ipa-*|ipa_*) say "agent option ${arg%%=*}=${arg#*=}" ;;
    esac
done

# ---- kernel modules: the drivers for the hardware present (by modalias, twice: virtio devices only
# appear once virtio_pci is bound), the ones with no alias that tools need, and any extra ones asked for
load_hardware_modules() {
    for alias in $(cat /sys/bus/*/devices/*/modalias 2>/dev/null | sort -u); do
        modprobe -q -b "$alias" 2>/dev/null
    done
}
load_hardware_modules
load_hardware_modules
for m in sd_mod sr_mod sg loop isofs vfat nls_cp437 nls_iso8859_1 ipmi_devintf ipmi_si $EXTRA_MODULES; do
    modprobe -q "$m" 2>/dev/null || [ "$m" = ipmi_si ] || say "module $m could not be loaded"
done
say "modules loaded: $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"

# ---- network: static addresses first, from a config drive's or the virtual CD's
# openstack/latest/network_data.json (booted from virtual media there may be no DHCP server);
# netconfig prints the NICs it configured. Every other interface (any name) gets DHCP; udhcpc keeps
# running to renew its lease.
ip link set lo up
STATIC_NICS=" $(python3 -m ironworks.agent.netconfig </dev/null | tr '\n' ' ') "
NICS=""
for dev in /sys/class/net/*; do
    nic=${dev##*/}
    [ "$nic" = lo ] && continue
    [ -e "$dev/device" ] || [ -e "$dev/phy80211" ] || continue  # physical interfaces only
    NICS="$NICS $nic"
    case "$STATIC_NICS" in
        *" $nic "*) say "interface $nic ($(cat "$dev/address")) has a static address: no DHCP on it"; continue ;;
    esac
    ip link set "$nic" up
    say "interface $nic ($(cat "$dev/address")) up, starting DHCP"
    udhcpc -i "$nic" -f -S -t 20 -T 3 -A 10 -x hostname:ironworks-ramdisk \
        -s /usr/share/udhcpc/default.script >/dev/null 2>&1 &
done
if [ -z "$NICS" ]; then
    say "no network interface found; the agent will start without one"
else
    waited=0
    while [ "$waited" -lt "$DHCP_WAIT" ] && ! ip -4 -o addr show scope global | grep -q inet; do
        sleep 1; waited=$((waited + 1))
    done
    if ip -4 -o addr show scope global | grep -q inet; then
        say "network up after ${waited}s: $(ip -4 -o addr show scope global | awk '{printf "%s %s ", $2, $4}')"
    else
        say "no DHCP lease after ${DHCP_WAIT}s on:$NICS; starting the agent anyway (it keeps retrying)"
    fi
fi

# ---- rescue logins. The agent's rescue.finalize_rescue sets the rescue user's password (chpasswd -e
# writes /etc/shadow, where the build left "rescue:!", locked). Only then do logins open: a getty on
# each console of the kernel command line and sshd (password, rescue only; root refused).
# Before that nothing listens for a login, so a deploy or clean ramdisk offers none.
rescue_password_set() { grep -q '^rescue:[$]' /etc/shadow 2>/dev/null; }
respawn() { while :; do "$@"; sleep 1; done; }  # a getty exits after each session; dropbear if it dies
start_rescue_logins() {
    chown -R rescue:rescue /home/rescue && chmod 0700 /home/rescue
    for con in ${CONSOLES:-tty0}; do
        dev=${con%%,*}; baud=${con#"$dev"}; baud=${baud#,}; baud=${baud%%[!0-9]*}
        [ "$dev" = tty0 ] && dev=tty1  # tty0 means "the current virtual terminal": the prompt goes on the first
        if [ -c "/dev/$dev" ]; then
            respawn getty -L "${baud:-115200}" "$dev" linux </dev/null >/dev/null 2>&1 &
            say "login prompt on $dev (user rescue)"
        else
            say "console $dev has no device /dev/$dev: no login prompt there"
        fi
    done
    if [ ! -x /usr/sbin/sshd ]; then
        say "no SSH server in this ramdisk (built --without openssh-server): log in on the console"
        return
    fi
    # a host key made now in tmpfs (none in the image, a new one each boot); openssl, as ssh-keygen is not here
    mkdir -p -m 0700 /run/ironworks-ssh
    mkdir -p -m 0755 /run/sshd  # sshd's privilege-separation directory
    key=/run/ironworks-ssh/ssh_host_ecdsa_key
    if ! (umask 077; openssl ecparam -name prime256v1 -genkey -noout -out "$key" 2>/dev/null); then
        say "could not make an SSH host key (openssl ecparam failed): log in on the console"
        return
    fi
    # -D -e: in the foreground, its log on the console; /etc/ssh/sshd_config lets in rescue only, never root
    respawn /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config </dev/null &
    say "SSH server on port 22 (host key ecdsa-sha2-nistp256, new each boot):" \
        "ssh rescue@$(ip -4 -o addr show scope global | awk '{sub("/.*", "", $4); printf "%s ", $4}')"
}
(
    while ! rescue_password_set; do sleep 2; done
    say "the rescue password is set: opening logins for user rescue"
    start_rescue_logins
) &

# ---- the agent, started again when it fails (bounded), with its output on the console
runs=0
while :; do
    runs=$((runs + 1))
    say "starting the agent (run $runs, uptime $(cut -d' ' -f1 /proc/uptime)s)"
    python3 -m ironworks.agent </dev/null
    status=$?
    if [ "$status" -eq 0 ]; then
        say "the agent stopped (exit 0)"
        break
    fi
    if [ "$status" -eq 2 ]; then
        say "the agent refused its configuration (exit 2): check the ipa-* options on the kernel command line"
        break
    fi
    if [ "$runs" -gt "$RESTARTS" ]; then
        say "the agent failed $runs times (last exit $status); not starting it again"
        break
    fi
    say "the agent exited with status $status; starting it again in 5 s ($runs of $RESTARTS restarts)"
    sleep 5
done

if [ "$DEBUG_SHELL" = 1 ]; then
    say "ironworks-debug-shell=1: root shell on the console (exit it to power off)"
    setsid cttyhack sh -l
    poweroff -f
fi
say "the agent is not running; waiting for the conductor to power this machine off"
while :; do sleep 3600; done
