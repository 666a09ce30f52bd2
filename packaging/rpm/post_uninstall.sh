# The spool is never removed: it may hold audit records Splunk has not accepted.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
