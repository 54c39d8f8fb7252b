# Kubernetes: images, kind/minikube clusters, the Helm chart, monitoring, and the chart's offline proof.
# Included by the Makefile (include mk/*.mk). Walkthrough: docs/kubernetes.md.
# Tools pinned here are installed into .tools/ on demand; docker, kubectl and (for minikube) minikube
# come from the user's machine. Without a Docker engine, images are built with buildah by
# k8s/local/images.sh (which also makes the local cluster's stand-in images).

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
BUILDAH ?= buildah
IMAGES_SH ?= k8s/local/images.sh

# auto, docker or buildah: what `make images` builds with (auto: Docker when its engine answers, else buildah).
IMAGE_BUILDER ?= auto
# kind, minikube or local (the cluster of k8s/local): where `make load` puts the images; auto is kind when
# a Docker engine answers, else local.
K8S_CLUSTER ?= auto
# The stand-in groups `make cluster-images` builds (k8s/local/images.sh thirdparty GROUP...).
IMAGE_GROUPS ?= chart cluster ingress monitoring
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
kind-up: $(KIND) $(HELM) ## Create the kind cluster (ports 80/443/1883 on localhost) with Traefik as ingress controller
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
images: ## Build the four images, visiontrack/<part>:IMAGE_TAG (default dev): Docker if its engine answers, else buildah
	@test -f $(INGESTOR_CONTEXT)/Dockerfile || { echo "make images: $(INGESTOR_CONTEXT)/Dockerfile is missing"; exit 1; }
	@builder='$(IMAGE_BUILDER)'; \
	if [ "$$builder" = auto ]; then \
	  if command -v $(DOCKER) >/dev/null 2>&1 && $(DOCKER) info >/dev/null 2>&1; then builder=docker; \
	  elif command -v $(BUILDAH) >/dev/null 2>&1; then builder=buildah; \
	    echo "==> no Docker engine answers ('$(DOCKER)'): building with buildah ($(IMAGES_SH))"; \
	  elif command -v $(DOCKER) >/dev/null 2>&1; then \
	    echo "make images: the '$(DOCKER)' command is there but no Docker engine answers, and '$(BUILDAH)' is not found: start Docker, or install buildah (apt-get install buildah podman mmdebstrap)"; exit 1; \
	  else \
	    echo "make images: '$(DOCKER)' not found, and '$(BUILDAH)' not found either: install Docker, or buildah (apt-get install buildah podman mmdebstrap)"; exit 1; \
	  fi; \
	fi; \
	case $$builder in \
	docker) \
	  command -v $(DOCKER) >/dev/null 2>&1 || { echo "make images: '$(DOCKER)' not found"; exit 1; }; \
	  echo "==> visiontrack/ingestor:$(IMAGE_TAG)"; \
	  $(DOCKER) build -t visiontrack/ingestor:$(IMAGE_TAG) -f $(INGESTOR_CONTEXT)/Dockerfile $(INGESTOR_CONTEXT) || exit 1; \
	  for part in registry query aggregator; do \
	    echo "==> visiontrack/$$part:$(IMAGE_TAG)"; \
	    $(DOCKER) build -t visiontrack/$$part:$(IMAGE_TAG) -f services/Dockerfile \
	      --build-arg SERVICE=$$part --target $$part . || exit 1; \
	  done; \
	  $(DOCKER) image ls --filter reference='visiontrack/*:$(IMAGE_TAG)' ;; \
	buildah) \
	  command -v $(BUILDAH) >/dev/null 2>&1 || { echo "make images: '$(BUILDAH)' not found"; exit 1; }; \
	  $(IMAGES_SH) project $(IMAGE_TAG) ;; \
	*) echo "make images: IMAGE_BUILDER must be auto, docker or buildah, not '$$builder'"; exit 1 ;; \
	esac

.PHONY: cluster-images
cluster-images: ## Build the local cluster's stand-in images without Docker (bases, then IMAGE_GROUPS; see k8s/local/images.sh)
	$(IMAGES_SH) bases
	$(IMAGES_SH) thirdparty $(IMAGE_GROUPS)
	@$(IMAGES_SH) list

.PHONY: load
# local: the chart's third-party images (Postgres, Redis, exporters, curl) go in too, built once if missing.
load: ## Load the four images into the cluster (K8S_CLUSTER=kind|minikube|local; auto: kind if Docker runs, else local)
	@cluster='$(K8S_CLUSTER)'; \
	if [ "$$cluster" = auto ]; then \
	  if command -v $(DOCKER) >/dev/null 2>&1 && $(DOCKER) info >/dev/null 2>&1; then cluster=kind; else cluster=local; fi; \
	fi; \
	case $$cluster in \
	minikube) for part in $(K8S_PARTS); do $(MINIKUBE) image load --profile $(MINIKUBE_PROFILE) visiontrack/$$part:$(IMAGE_TAG) || exit 1; done ;; \
	kind) for part in $(K8S_PARTS); do $(KIND) load docker-image --name $(KIND_CLUSTER) visiontrack/$$part:$(IMAGE_TAG) || exit 1; done ;; \
	local) $(IMAGES_SH) thirdparty chart && \
	  $(IMAGES_SH) load chart $(foreach part,$(K8S_PARTS),visiontrack/$(part):$(IMAGE_TAG)) ;; \
	*) echo "make load: K8S_CLUSTER must be kind, minikube, local or auto, not '$$cluster'"; exit 1 ;; \
	esac

.PHONY: retag-images
retag-images: ## Tag the four images FROM_TAG as IMAGE_TAG too (an upgrade to roll out without rebuilding)
	@test -n "$(FROM_TAG)" || { echo "make retag-images: set FROM_TAG, the tag the images have now"; exit 1; }
	@if command -v $(DOCKER) >/dev/null 2>&1 && $(DOCKER) info >/dev/null 2>&1 && [ "$(IMAGE_BUILDER)" != buildah ]; then \
	  for part in $(K8S_PARTS); do $(DOCKER) tag visiontrack/$$part:$(FROM_TAG) visiontrack/$$part:$(IMAGE_TAG) || exit 1; done; \
	else \
	  $(IMAGES_SH) retag $(FROM_TAG) $(IMAGE_TAG); \
	fi

# kube-prometheus-stack's chart: from KPS_CHART (a packaged chart) or else from its repository.
KPS_CHART ?=
KPS_CHART_REF = $(if $(KPS_CHART),$(KPS_CHART),kube-prometheus-stack --repo https://prometheus-community.github.io/helm-charts --version $(KPS_CHART_VERSION))
MONITORING_VALUES ?= k8s/kube-prometheus-stack-values.yaml
# A command run before the install (the local cluster builds and loads its stand-in images there).
MONITORING_IMAGES ?=

.PHONY: monitoring
monitoring: $(HELM) ## Install kube-prometheus-stack (Prometheus Operator, Prometheus, Grafana) into namespace monitoring (KPS_CHART: a local chart file)
	@if [ -n "$(KPS_CHART)" ] && [ ! -f "$(KPS_CHART)" ]; then \
	  echo "make monitoring: KPS_CHART=$(KPS_CHART) is not a file"; exit 1; fi
	$(MONITORING_IMAGES)
	$(HELM) upgrade --install kube-prometheus-stack $(KPS_CHART_REF) \
	  --namespace $(MONITORING_NAMESPACE) --create-namespace \
	  $(foreach f,$(MONITORING_VALUES),-f $(f)) --wait --timeout 10m \
	  || { echo "make monitoring: failed; without access to https://prometheus-community.github.io/helm-charts, set KPS_CHART to kube-prometheus-stack-$(KPS_CHART_VERSION).tgz"; exit 1; }
	@echo "==> monitoring installed; install (or upgrade) the chart now, so its ServiceMonitors and rules are rendered"

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
