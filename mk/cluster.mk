# A local single-node Kubernetes without Docker (k8s/local), and the tests that run on a real cluster.
# Included by the Makefile. Walkthrough: docs/kubernetes.md, "Without Docker: a cluster on this machine".

##@ Kubernetes on this machine, without Docker

LOCAL_CLUSTER := k8s/local/cluster.sh
LOCAL_KUBECONFIG := $(CURDIR)/run/cluster/kubeconfig
LOCAL_K8S_BIN = $(shell k8s/local/tools.sh bin kubernetes)

# While the local cluster is up, make's Kubernetes targets use it unless KUBECONFIG says otherwise,
# and `make monitoring` installs what runs here (no Grafana; stand-in images; values in k8s/local).
ifneq ($(wildcard $(LOCAL_KUBECONFIG)),)
export KUBECONFIG ?= $(LOCAL_KUBECONFIG)
endif
ifeq ($(KUBECONFIG),$(LOCAL_KUBECONFIG))
MONITORING_VALUES ?= k8s/kube-prometheus-stack-values.yaml k8s/local/kube-prometheus-stack-values.yaml
MONITORING_IMAGES ?= k8s/local/images.sh thirdparty monitoring && k8s/local/images.sh load monitoring
endif

.PHONY: cluster-deps
cluster-deps: ## Install the Debian packages the local cluster runs on (containerd, runc, etcd, CNI plugins, buildah)
	$(LOCAL_CLUSTER) deps

.PHONY: cluster-prepare
cluster-prepare: cluster-deps ## Build every tool and image the local cluster and test-cluster need (cached; no other change)
	$(LOCAL_CLUSTER) prepare

.PHONY: cluster-up
cluster-up: cluster-deps $(HELM) ## Start a single-node cluster here (root; no Docker) with Traefik; tools built once, cached
	$(LOCAL_CLUSTER) up
	$(MAKE) --no-print-directory traefik KUBECONFIG=$(LOCAL_KUBECONFIG) \
	  TRAEFIK_VALUES="k8s/traefik-values.yaml k8s/local/traefik-values.yaml"
	@echo "==> cluster ready; kubectl: export KUBECONFIG=$(LOCAL_KUBECONFIG) PATH=$(LOCAL_K8S_BIN):\$$PATH"
	@echo "    next: make images load deploy K8S_CLUSTER=local   (or: make test-cluster)"

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and undo every change it made to this machine
	$(LOCAL_CLUSTER) down

.PHONY: cluster-status
cluster-status: ## Show what the local cluster runs
	$(LOCAL_CLUSTER) status

.PHONY: test-cluster
test-cluster: venv $(HELM) ## On the cluster kubectl points at: install, helm test, e2e through Traefik, policies, upgrade under load, uninstall
	HELM=$(HELM) K8S_CLUSTER=$(K8S_CLUSTER) IMAGE_TAG=$(IMAGE_TAG) K8S_NAMESPACE=$(K8S_NAMESPACE) \
	  K8S_RELEASE=$(K8S_RELEASE) KUBECTL=$(KUBECTL) ./scripts/test-cluster.sh
