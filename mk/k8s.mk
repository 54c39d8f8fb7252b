# Kubernetes: images, kind/minikube clusters, the Helm chart, monitoring, and the chart's offline proof.
# Included by the Makefile (include mk/*.mk). Walkthrough: docs/kubernetes.md.
# Tools pinned here are installed into .tools/ on demand; docker, kubectl and (for minikube) minikube
# come from the user's machine.

##@ Kubernetes

K8S_TOOLS := $(CURDIR)/.tools/bin
HELM_VERSION ?= v4.3.1
KIND_VERSION ?= v0.33.0
TRAEFIK_CHART_VERSION ?= 37.3.0
KPS_CHART_VERSION ?= 88.5.3
HELM ?= $(K8S_TOOLS)/helm
KIND ?= $(K8S_TOOLS)/kind
KUBECTL ?= kubectl
MINIKUBE ?= minikube
DOCKER ?= docker

# kind or minikube: where `make load` puts the images.
K8S_CLUSTER ?= kind
KIND_CLUSTER ?= visiontrack
MINIKUBE_PROFILE ?= visiontrack
K8S_NAMESPACE ?= visiontrack
K8S_RELEASE ?= visiontrack
MONITORING_NAMESPACE ?= monitoring
IMAGE_TAG ?= dev
K8S_PARTS := ingestor registry query aggregator
# The ingestor builds from its own folder; the Python images from the repository root, all three from
# services/Dockerfile (SERVICE and --target name the part).
INGESTOR_CONTEXT ?= rust-ingestor
CHART := charts/visiontrack
CHART_PYTEST ?= $(if $(wildcard .venv/bin/python),.venv/bin/python,python3) -m pytest

$(HELM):
	HELM_VERSION=$(HELM_VERSION) ./scripts/install-chart-tools.sh

$(KIND):
	@echo "==> building kind $(KIND_VERSION) into .tools/bin"
	GOBIN=$(K8S_TOOLS) go install sigs.k8s.io/kind@$(KIND_VERSION)

.PHONY: kind-up
kind-up: $(KIND) $(HELM) ## Create the kind cluster (ports 80/443 on localhost) with Traefik as ingress controller
	@if $(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)'; then \
	  echo "==> kind cluster $(KIND_CLUSTER) already exists"; \
	else \
	  $(KIND) create cluster --name $(KIND_CLUSTER) --config k8s/kind-config.yaml; \
	fi
	$(KUBECTL) config use-context kind-$(KIND_CLUSTER)
	$(MAKE) --no-print-directory traefik TRAEFIK_VALUES="k8s/traefik-values.yaml k8s/traefik-kind-values.yaml"
	@echo "==> kind cluster ready; next: make images load deploy K8S_CLUSTER=kind"

.PHONY: minikube-up
minikube-up: $(HELM) ## Start minikube (Calico, so NetworkPolicies are enforced) with Traefik as ingress controller
	$(MINIKUBE) start --profile $(MINIKUBE_PROFILE) --cpus 4 --memory 8g --cni calico
	$(KUBECTL) config use-context $(MINIKUBE_PROFILE)
	$(MAKE) --no-print-directory traefik TRAEFIK_VALUES=k8s/traefik-values.yaml
	@echo "==> minikube ready; run 'minikube tunnel --profile $(MINIKUBE_PROFILE)' in another terminal for the ingress,"
	@echo "    next: make images load deploy K8S_CLUSTER=minikube"

# Traefik's chart: from TRAEFIK_CHART (a packaged chart, for machines that cannot reach the chart
# repository) or else from the repository at the pinned version.
TRAEFIK_CHART ?=
TRAEFIK_VALUES ?= k8s/traefik-values.yaml
TRAEFIK_CHART_REF = $(if $(TRAEFIK_CHART),$(TRAEFIK_CHART),traefik --repo https://traefik.github.io/charts --version $(TRAEFIK_CHART_VERSION))

.PHONY: traefik
traefik: $(HELM) ## Install Traefik, the ingress controller (TRAEFIK_CHART: a local chart file instead of the repository)
	@if [ -n "$(TRAEFIK_CHART)" ] && [ ! -f "$(TRAEFIK_CHART)" ]; then \
	  echo "make traefik: TRAEFIK_CHART=$(TRAEFIK_CHART) is not a file"; exit 1; fi
	$(HELM) upgrade --install traefik $(TRAEFIK_CHART_REF) --namespace traefik --create-namespace \
	  $(foreach f,$(TRAEFIK_VALUES),-f $(f)) --wait --timeout 5m \
	  || { echo "make traefik: failed; without access to https://traefik.github.io/charts, set TRAEFIK_CHART to traefik-$(TRAEFIK_CHART_VERSION).tgz"; exit 1; }

.PHONY: images
images: ## Build the four images, visiontrack/<part>:IMAGE_TAG (default dev), with Docker
	@command -v $(DOCKER) >/dev/null 2>&1 || { echo "make images: '$(DOCKER)' not found: install Docker to build the images (nothing else here needs it)"; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "make images: the '$(DOCKER)' command is there but no Docker engine answers: start Docker, or use a machine that has one"; exit 1; }
	@test -f $(INGESTOR_CONTEXT)/Dockerfile || { echo "make images: $(INGESTOR_CONTEXT)/Dockerfile is missing"; exit 1; }
	$(DOCKER) build -t visiontrack/ingestor:$(IMAGE_TAG) -f $(INGESTOR_CONTEXT)/Dockerfile $(INGESTOR_CONTEXT)
	@for part in registry query aggregator; do \
	  echo "==> visiontrack/$$part:$(IMAGE_TAG)"; \
	  $(DOCKER) build -t visiontrack/$$part:$(IMAGE_TAG) -f services/Dockerfile \
	    --build-arg SERVICE=$$part --target $$part . || exit 1; \
	done
	@$(DOCKER) image ls --filter reference='visiontrack/*:$(IMAGE_TAG)'

.PHONY: load
load: ## Load the images into the cluster (K8S_CLUSTER=kind|minikube)
ifeq ($(K8S_CLUSTER),minikube)
	@for part in $(K8S_PARTS); do $(MINIKUBE) image load --profile $(MINIKUBE_PROFILE) visiontrack/$$part:$(IMAGE_TAG) || exit 1; done
else
	@for part in $(K8S_PARTS); do $(KIND) load docker-image --name $(KIND_CLUSTER) visiontrack/$$part:$(IMAGE_TAG) || exit 1; done
endif

.PHONY: monitoring
monitoring: $(HELM) ## Install kube-prometheus-stack (Prometheus Operator, Prometheus, Grafana) into namespace monitoring
	$(HELM) upgrade --install kube-prometheus-stack kube-prometheus-stack \
	  --repo https://prometheus-community.github.io/helm-charts --version $(KPS_CHART_VERSION) \
	  --namespace $(MONITORING_NAMESPACE) --create-namespace \
	  -f k8s/kube-prometheus-stack-values.yaml --wait --timeout 10m
	@echo "==> Grafana: make port-forward, then http://localhost:3000 (admin / visiontrack)"

.PHONY: deploy
deploy: $(HELM) ## Install or upgrade the chart with the loaded images, then run its helm test
	$(HELM) upgrade --install $(K8S_RELEASE) $(CHART) --namespace $(K8S_NAMESPACE) --create-namespace \
	  --set imageDefaults.tag=$(IMAGE_TAG) --wait --timeout 10m $(HELM_ARGS)
	$(HELM) test $(K8S_RELEASE) --namespace $(K8S_NAMESPACE) --logs --timeout 5m
	@echo "==> deployed; the API is behind the ingress (kind: http://localhost, minikube: the tunnel's address)"

.PHONY: undeploy
undeploy: $(HELM) ## Uninstall the release (the database volumes stay until the namespace is deleted)
	$(HELM) uninstall $(K8S_RELEASE) --namespace $(K8S_NAMESPACE) --wait
	@echo "==> to drop the data too: $(KUBECTL) delete namespace $(K8S_NAMESPACE)"

.PHONY: port-forward
port-forward: ## Forward the API (ingress, :8080) and Grafana (:3000) to localhost; Ctrl-C stops
	@echo "==> API through the ingress: http://localhost:8080   Grafana: http://localhost:3000"
	@trap 'kill 0' INT TERM EXIT; \
	  $(KUBECTL) --namespace traefik port-forward svc/traefik 8080:80 & \
	  $(KUBECTL) --namespace $(MONITORING_NAMESPACE) port-forward svc/kube-prometheus-stack-grafana 3000:80 & \
	  wait

.PHONY: kind-down
kind-down: $(KIND) ## Delete the kind cluster
	$(KIND) delete cluster --name $(KIND_CLUSTER)

.PHONY: minikube-down
minikube-down: ## Delete the minikube cluster
	$(MINIKUBE) delete --profile $(MINIKUBE_PROFILE)

.PHONY: chart-lint
chart-lint: $(HELM) ## helm lint --strict the chart with its default values and every ci/ values file
	$(HELM) lint --strict $(CHART)
	@for f in $(CHART)/ci/*-values.yaml; do echo "==> $$f"; $(HELM) lint --strict $(CHART) -f $$f || exit 1; done

.PHONY: chart-test
chart-test: ## Prove the chart offline: render, validate, cross-check against the code (tests/chart)
	./scripts/install-chart-tools.sh --quiet
	$(CHART_PYTEST) -m "chart and not integration" tests/chart
