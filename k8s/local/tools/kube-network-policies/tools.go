//go:build tools

// Package tools names the programs this module builds, so go mod tidy keeps their dependencies.
package tools

import (
	_ "sigs.k8s.io/kube-network-policies/cmd"
)
