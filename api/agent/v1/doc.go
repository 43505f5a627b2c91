// Package agentv1 holds the generated protobuf and gRPC code of the agent's
// local control API (agent.proto). Regenerate with `make generate`.
package agentv1
