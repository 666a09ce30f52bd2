# $1: 0 on erase, 1 on upgrade. Erase stops and disables the service.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now rc-audit-hec.service || true
fi
