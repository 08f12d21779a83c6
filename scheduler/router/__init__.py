"""The request router: snapshot of the cluster, TTFT cost of pairs, the decision."""
