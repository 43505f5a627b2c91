// Package docs holds the project's documentation; its tests keep
// architecture.md true to the code.
package docs
