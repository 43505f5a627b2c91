package store

import "go.uber.org/zap"

// nopZap silences the etcd client's own logging; errors reach us as values.
func nopZap() *zap.Logger { return zap.NewNop() }
