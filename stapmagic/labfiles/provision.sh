#!/bin/sh
# Runs once, inside the freshly debootstrapped lab tree (chroot, with /proc /sys /dev mounted by
# stapmagic.lab). Its text is part of the recipe hash, so editing it rebuilds the lab.
set -eu
here=$(dirname "$0")
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

# Daemons must not start inside the build chroot (they would run on the host's kernel and keep
# the mounts busy); policy-rc.d is honoured by invoke-rc.d and deb-systemd-invoke.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d

# The initramfs only has to mount /dev/vda: virtio_blk and ext4 (virtio_pci is built in). A
# listed-modules initramfs is a fraction of MODULES=most and saves seconds of TCG boot; it also
# does not depend on the build host's hardware. stapmagic.lab verifies the result.
mkdir -p /etc/initramfs-tools/conf.d /usr/share/initramfs-tools/modules.d /etc/modprobe.d
printf 'MODULES=list\nCOMPRESS=gzip\n' > /etc/initramfs-tools/conf.d/stapmagic.conf
printf 'virtio_blk\next4\ncrc32c_generic\n' > /usr/share/initramfs-tools/modules.d/stapmagic
install -m 0644 "$here/modprobe-blacklist.conf" /etc/modprobe.d/stapmagic-lab.conf

apt-get update
# shellcheck disable=SC2046  # one package per word is intended
apt-get install -y --no-install-recommends $(grep -v -e '^#' -e '^[[:space:]]*$' "$here/packages.txt")

rm -f /usr/sbin/policy-rc.d

echo stapmagic-lab > /etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\tstapmagic-lab\n' > /etc/hosts
printf '/dev/vda\t/\text4\trw,noatime\t0\t0\n' > /etc/fstab

install -m 0644 "$here/sshd_stapmagic.conf" /etc/ssh/sshd_config.d/stapmagic.conf
install -m 0644 "$here/stapmagic-net.service" /etc/systemd/system/stapmagic-net.service
systemctl enable stapmagic-net.service ssh.service
systemctl set-default multi-user.target
# Timers and services that only cost boot time or CPU in a throwaway TCG guest.
systemctl mask apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
    e2scrub_reap.service fstrim.timer systemd-tmpfiles-clean.timer man-db.timer \
    systemd-networkd-wait-online.service getty@tty1.service getty-static.service \
    modprobe@drm.service modprobe@efi_pstore.service sys-fs-fuse-connections.mount \
    proc-sys-fs-binfmt_misc.automount systemd-binfmt.service
mkdir -p /etc/systemd/journald.conf.d
install -m 0644 "$here/journald.conf" /etc/systemd/journald.conf.d/stapmagic.conf

# Per-image keys: the guest's host keys (pinned on the client side below) and root's login key.
rm -f /etc/ssh/ssh_host_*
ssh-keygen -A
install -d -m 0700 /root/.ssh
rm -f /root/.ssh/stapmagic_lab_ed25519 /root/.ssh/stapmagic_lab_ed25519.pub
ssh-keygen -q -t ed25519 -N '' -C stapmagic-lab -f /root/.ssh/stapmagic_lab_ed25519
chmod 0600 /root/.ssh/stapmagic_lab_ed25519
install -m 0600 /root/.ssh/stapmagic_lab_ed25519.pub /root/.ssh/authorized_keys
printf 'stapmagic-lab %s\n' "$(cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub)" \
    > /root/.ssh/stapmagic_lab_known_hosts

# stap --remote runs `stapsh` through ssh; Debian installs it off PATH, and without it stap
# silently falls back to a slower scp+ssh path.
stapsh=$(dpkg -L systemtap-runtime | grep '/stapsh$' | head -n 1)
test -x "$stapsh"
ln -sf "$stapsh" /usr/local/bin/stapsh

# Every ssh login (stap --remote makes several per run) would rerun the motd scripts: seconds
# of CPU per login under TCG, for a banner nobody reads.
sed -i '/pam_motd/d' /etc/pam.d/sshd

# Workloads for `stap -c`, and a staprun wrapper that runs -c commands where they are.
install -d -m 0755 /root/work
install -m 0644 "$here"/connect_a_few.py "$here"/connect_fail.py "$here"/read_files.py /root/work/
dpkg-divert --local --rename --add /usr/bin/staprun
install -m 0755 "$here/staprun-wrapper.sh" /usr/bin/staprun
# The packaged staprun is setuid root for the stapusr group; the wrapper runs as root only.
chmod 0755 /usr/bin/staprun.distrib

apt-get clean
# Mark /etc and /var as up to date with /usr, or every boot of the snapshot disk reruns
# ldconfig, hwdb and catalog updates (ConditionNeedsUpdate).
touch /etc/.updated /var/.updated
