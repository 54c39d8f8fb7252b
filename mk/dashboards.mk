# The Grafana dashboards (charts/visiontrack/files/dashboards) proven and looked at without Grafana:
# stack/dashboards.py runs their queries as Grafana would, stack/snapshot.py draws them. Included by the
# Makefile. Their tests: tests/observability (test_dashboard_*.py, test_snapshot.py).

##@ Observability

.PHONY: dashboard-snapshot
dashboard-snapshot: venv ## Draw every dashboard panel from live queries into run/dashboards/*.png (make up's sources; DASHBOARD_* settings)
	$(PY) -m stack.snapshot

.PHONY: dashboard-validate
dashboard-validate: ## Check both dashboards against Grafana's dashboard schema (grafana-dashboard-validate, built into .tools/bin)
	./scripts/install-chart-tools.sh --quiet
	$(K8S_TOOLS)/grafana-dashboard-validate charts/visiontrack/files/dashboards/*.json
