"""Planning LLM serving deployments: workload, deployment, cost model, scheduler simulation, search."""
