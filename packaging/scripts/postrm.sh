#!/bin/sh
# Forget the removed units. The titus group, /etc/titus-agent (conffiles
# until purge) and /var/lib/titus-agent (task state) are kept.
set -e
if command -v systemctl >/dev/null 2>&1; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
