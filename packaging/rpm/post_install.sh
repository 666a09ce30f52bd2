# $1: 1 on install, 2 on upgrade. Not enabled or started on install (it needs accounts and
# credentials first); a running service is restarted onto the new binary on upgrade.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    if [ "$1" -ge 2 ]; then
        systemctl try-restart rc-audit-hec.service || true
    fi
fi
