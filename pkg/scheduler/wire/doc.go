// Package wire converts the scheduler's domain model (package model) to and
// from its protobuf forms: the API's messages and the records the store
// keeps in etcd (the same messages, so records written before the model
// existed still load). Nothing else in the scheduler touches the protos
// except the API layer's handlers.
package wire
