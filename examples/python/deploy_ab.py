#!/usr/bin/env python3
"""
The guide's Phase 5 (Deployment) and its best practice "A/B Test Before Full Deployment", as
written, on the job the complete pipeline trained (AGENTCORE_JOB), against a local server
(examples/python/run_pipeline.sh runs it after the pipeline).

The production gate is real: the pipeline's small model is rarely significantly better than
before training, so the deploy of step 2 can be refused with code -40006 (the message quotes
McNemar's p and the improvement). The example then shows the refusal and deploys with
force=True, which the deployment records.
"""

import os

from agentcore.sdk import AgentcoreError, TrainingClient

client = TrainingClient(base_url=os.getenv("AGENTCORE_URL"), api_key=os.getenv("AGENTCORE_API_KEY"))
job_id = os.environ["AGENTCORE_JOB"]
status = client.get_status(job_id)

# --- Phase 5, as in the guide -------------------------------------------------------------
# 1. Get best checkpoint
best_checkpoint = status["best_checkpoint_id"]

# 2. Deploy to production (example)
try:
    client.deploy_checkpoint(
        agent_id="code-generator-v2",
        checkpoint_id=best_checkpoint,
        environment="production"
    )
    print("Deployed to production: the held-out evaluation is significantly better")
except AgentcoreError as e:
    if e.code != -40006:
        raise
    print(f"Production gate refused the deploy: {e.message}")
    d = client.deploy_checkpoint("code-generator-v2", best_checkpoint, "production", force=True)
    print(f"Deployed with force=True (recorded: forced={d['forced']}), version {d['version']}")

# 3. A/B test (recommended)
client.configure_ab_test(
    agent_id="code-generator-v2",
    baseline_checkpoint=None,  # Current production
    experiment_checkpoint=best_checkpoint,
    traffic_split=0.1  # 10% to new version
)

# --- Users call the agent; their verdicts feed the test ------------------------------------
queries = ["Compute the sum of [3, 4, 5]", "Sort the list [3, 1, 2]", "What is the maximum of [7, 2, 9]?"]
arms = {}
for i in range(60):
    r = client.invoke("code-generator-v2", queries[i % len(queries)], user_key=f"user-{i % 20}")
    assert arms.setdefault(f"user-{i % 20}", r["arm"]) == r["arm"], "a user changed arms"
    client.feedback(r["invocation_id"], success=r["answer"] is not None and i % 3 != 0)
report = client.get_ab_test("code-generator-v2")
print(f"A/B: {report['baseline']['invocations']} baseline / {report['experiment']['invocations']} "
      f"experiment invocations, decision {report['decision']} (p = {report['p_value']:.3f})")
client.stop_ab_test("code-generator-v2")

# --- Best practice 5: A/B test before full deployment, as written --------------------------
current = client.list_deployments("code-generator-v2", environment="production")["deployments"][0]["checkpoint_id"]
new = best_checkpoint

# 1. Deploy to 10% of traffic
client.configure_ab_test(
    baseline_checkpoint=current,
    experiment_checkpoint=new,
    traffic_split=0.1
)

# 2. Monitor for 24 hours
report = client.get_ab_test("code-generator-v2")
success_rate_improvement = report["difference"] or 0.0

# 3. Gradual rollout
if success_rate_improvement > 0.05:
    client.configure_ab_test(..., traffic_split=0.5)
    # Eventually: traffic_split=1.0
client.configure_ab_test(..., traffic_split=0.5)  # the raise, shown here whatever the outcome
raised = client.get_ab_test("code-generator-v2")
print(f"Gradual rollout: split {raised['traffic_split']}, status {raised['status']}")
# Every invocation is stored with its trajectory and outcome, and exported page by page.
exported = list(client.iter_invocations("code-generator-v2", environment="production", page_size=25))
with_outcome = sum(1 for i in exported if i["success"] is not None)
print(f"Invocations exported: {len(exported)} ({with_outcome} with an outcome)")
print("Phase 5 done")
