-- One reading per request, flat form (the smallest valid ingest).
wrk.method = "POST"
wrk.body = '{"temperature":21.5}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("VT_BENCH_TOKEN") or "vtd_bench")
