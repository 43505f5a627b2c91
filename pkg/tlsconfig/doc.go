// Package tlsconfig builds the TLS configurations of the scheduler's gRPC
// endpoint (job API and agent stream) from PEM files: the server's, and
// the clients' (agents and the CLI). Without files, the endpoint is
// plaintext; with a CA on the server, clients must present certificates.
package tlsconfig
