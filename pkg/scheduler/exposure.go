package scheduler

import (
	"fmt"
	"log/slog"
	"net"
)

// checkExposure refuses, on a listen address that is not loopback,
// plaintext and an API without a policy, unless opts.Insecure; and says
// loudly in the log what is off.
func checkExposure(opts Options, log *slog.Logger) error {
	loop, err := isLoopback(opts.Listen)
	if err != nil {
		return err
	}
	if !loop && !opts.Insecure {
		if opts.TLS == nil {
			return fmt.Errorf("listen %s is not a loopback address: plaintext is refused there; configure TLS (--tls-cert, --tls-key, --tls-client-ca) or pass --insecure to accept that anyone on the network can read and forge calls", opts.Listen)
		}
		if opts.Policy == nil {
			return fmt.Errorf("listen %s is not a loopback address: without a policy file every caller may do everything; set --policy or pass --insecure", opts.Listen)
		}
	}
	if opts.TLS == nil && !loop {
		log.Warn("INSECURE: serving plaintext on a non-loopback address (--insecure): anyone on the network can read and forge calls", "listen", opts.Listen)
	}
	if opts.Policy == nil {
		log.Warn("AUTHORIZATION IS OFF: no policy file, every caller may submit, kill, scale and drain anything and read every job's environment; set --policy", "listen", opts.Listen)
	}
	return nil
}

// isLoopback reports whether every address host:port may name is a
// loopback address (an empty host or 0.0.0.0 is every interface).
func isLoopback(hostport string) (bool, error) {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false, fmt.Errorf("listen %q: %w", hostport, err)
	}
	if host == "" {
		return false, nil
	}
	if host == "localhost" {
		return true, nil
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback(), nil
	}
	ips, err := net.LookupIP(host)
	if err != nil || len(ips) == 0 {
		return false, nil
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return false, nil
		}
	}
	return true, nil
}
