// Package execterm is the caller's end of an exec session (task exec -i/-t),
// shared by titus-agent and titus-scheduler: it puts the caller's terminal
// in raw mode, streams stdin and window-size changes (SIGWINCH) up, writes
// output down, restores the terminal and returns the command's exit code.
package execterm

// MaxInput is the most stdin one exec input message carries; the agent
// and the scheduler's relay end a session that sends more. The caller's
// end sends at most half of it at a time.
const MaxInput = 64 << 10
