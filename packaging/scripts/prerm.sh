#!/bin/sh
# On removal (not upgrade) stop and disable the agent and its socket.
# Stopping the agent never kills tasks (KillMode=process); they keep
# running under containerd until stopped with `ctr -n titus`.
set -e
case "$1" in
remove|purge|0)
	if command -v systemctl >/dev/null 2>&1; then
		systemctl disable --now titus-agent.service titus-agent.socket titus-scheduler.service >/dev/null 2>&1 || true
	fi
	;;
esac
exit 0
