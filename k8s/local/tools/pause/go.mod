// The pod sandbox's placeholder process (what registry.k8s.io/pause does): it holds the pod's
// namespaces, reaps orphaned children and exits on SIGINT or SIGTERM.
module visiontrack.local/tools/pause

go 1.24.0
