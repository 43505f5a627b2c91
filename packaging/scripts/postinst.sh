#!/bin/sh
# Create the titus group (may use the agent's socket), enable the units
# without starting them: the AMI bake or the operator starts them. On an
# upgrade a running agent is restarted (tasks keep running).
set -e
if ! getent group titus >/dev/null; then
	groupadd --system titus
fi
if [ -d /run/systemd/system ] || command -v systemctl >/dev/null 2>&1; then
	systemctl daemon-reload >/dev/null 2>&1 || true
	systemctl enable titus-agent.socket titus-agent.service >/dev/null 2>&1 || \
		echo "titus-agent: could not enable units; run: systemctl enable titus-agent.socket titus-agent.service" >&2
	# Upgrade: a running agent picks up the new binary; tasks keep running.
	if [ "$1" = configure ] && [ -n "$2" ]; then
		systemctl try-restart titus-agent.service >/dev/null 2>&1 || true
	fi
fi
exit 0
