package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
)

type globalOpts struct {
	socket  string
	output  string
	timeout time.Duration
}

var opts globalOpts

// errUnreachable is a friendly dial error.
type cliError struct {
	msg  string
	code int
	// quiet: the exit code says it all (a terminal session's command exited).
	quiet bool
}

func (e *cliError) Error() string { return e.msg }

func exitCode(err error) int {
	var ce *cliError
	if errors.As(err, &ce) {
		return ce.code
	}
	if status.Code(err) == codes.PermissionDenied {
		return 4 // as when the socket itself is off limits
	}
	return 1
}

// oneLine turns gRPC errors into "code: message" on one line; a refusal by
// the daemon (SO_PEERCRED) reads like the socket's own permission error.
func oneLine(err error) string {
	if s, ok := status.FromError(err); ok {
		if s.Code() == codes.PermissionDenied {
			return strings.ReplaceAll(fmt.Sprintf("%s, refused by the agent at %s", s.Message(), opts.socket), "\n", " ")
		}
		return strings.ReplaceAll(fmt.Sprintf("%s: %s", strings.ToLower(s.Code().String()), s.Message()), "\n", " ")
	}
	return strings.ReplaceAll(err.Error(), "\n", " ")
}

// dial checks the socket first so that a missing daemon or a missing
// permission gets a clear one-line error instead of a gRPC retry loop.
func dial() (agentv1.AgentClient, func(), error) {
	c, err := net.DialTimeout("unix", opts.socket, 5*time.Second)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
			return nil, nil, &cliError{msg: fmt.Sprintf("cannot reach the agent at %s (is `titus-agent daemon` running?)", opts.socket), code: 3}
		case errors.Is(err, os.ErrPermission):
			return nil, nil, &cliError{msg: fmt.Sprintf("permission denied on %s: run as root or as a member of the agent's group", opts.socket), code: 4}
		}
		return nil, nil, &cliError{msg: fmt.Sprintf("cannot reach the agent at %s: %v", opts.socket, err), code: 3}
	}
	c.Close()
	conn, err := grpc.NewClient("unix://"+opts.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return agentv1.NewAgentClient(conn), func() { conn.Close() }, nil
}

func withClient(fn func(ctx context.Context, c agentv1.AgentClient) error) error {
	c, closeFn, err := dial()
	if err != nil {
		return err
	}
	defer closeFn()
	ctx := context.Background()
	if opts.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opts.timeout)
		defer cancel()
	}
	return fn(ctx, c)
}

func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: false}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

func printAny(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func addOutputFlag(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&opts.output, "output", "o", "table", "output format: table or json")
}
