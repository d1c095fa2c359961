"""Unit tests of the SDK that need no server: configs, webhook signatures, the reward server."""

import json
import math
import os
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from agentcore.sdk import TrainingClient  # noqa: E402
from agentcore.training import GRPOConfig, RewardRegistry, get_global_registry  # noqa: E402
from agentcore.webhooks import WebhookVerificationError, sign, verify_webhook  # noqa: E402


class ConfigTest(unittest.TestCase):
    def test_only_given_fields_are_sent_and_money_is_a_decimal_string(self):
        c = GRPOConfig(n_iterations=500, batch_size=16, max_budget_usd=50.00, learning_rate=0.0001)
        self.assertEqual(c.to_dict(), {"n_iterations": 500, "batch_size": 16, "max_budget_usd": "50.0", "learning_rate": 0.0001})
        self.assertEqual(c.batch_size, 16)

    def test_unknown_fields_are_refused_by_name(self):
        with self.assertRaisesRegex(TypeError, "batch_sise"):
            GRPOConfig(batch_sise=3)


class WebhookTest(unittest.TestCase):
    SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

    def test_the_standard_webhooks_example_vector(self):
        sig = sign(self.SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}')
        self.assertEqual(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")

    def test_verify_accepts_authentic_and_refuses_forged_or_stale(self):
        body = json.dumps({"event": "training.job.completed", "data": {"job_id": "j"}})
        now = int(time.time())
        headers = {"Webhook-Id": "msg_1", "Webhook-Timestamp": str(now), "Webhook-Signature": "v1,bogus " + sign(self.SECRET, "msg_1", now, body)}
        self.assertEqual(verify_webhook(body.encode(), headers, self.SECRET)["data"]["job_id"], "j")
        with self.assertRaises(WebhookVerificationError):
            verify_webhook(body.replace("j", "k"), headers, self.SECRET)
        stale = dict(headers, **{"Webhook-Timestamp": str(now - 3600), "Webhook-Signature": sign(self.SECRET, "msg_1", now - 3600, body)})
        with self.assertRaisesRegex(WebhookVerificationError, "tolerance"):
            verify_webhook(body, stale, self.SECRET)
        with self.assertRaisesRegex(WebhookVerificationError, "header"):
            verify_webhook(body, {}, self.SECRET)


class RewardServerTest(unittest.TestCase):
    def test_registered_functions_are_served_over_http(self):
        r = RewardRegistry()
        r.register("half", lambda t: 0.5 if t.success else 0.0)
        r.register("boom", lambda t: 1 / 0)
        r.set_agent_strategy("calc", "half")
        self.assertEqual(r.strategy("calc"), "half")
        with self.assertRaisesRegex(KeyError, "nope"):
            r.set_agent_strategy("calc", "nope")
        base = r.serve()
        try:
            def post(name, body):
                req = urllib.request.Request(f"{base}/rewards/{name}", data=json.dumps(body).encode(), method="POST")
                try:
                    with urllib.request.urlopen(req, timeout=5) as resp:
                        return resp.status, json.loads(resp.read())
                except urllib.error.HTTPError as e:
                    return e.code, json.loads(e.read())
            self.assertEqual(post("half", {"success": True, "final_answer": "3"}), (200, {"score": 0.5}))
            self.assertEqual(post("half", {"success": False}), (200, {"score": 0.0}))
            code, body = post("boom", {"success": True})
            self.assertEqual(code, 500)
            self.assertIn("ZeroDivisionError", body["error"])
            self.assertEqual(post("missing", {})[0], 404)
        finally:
            r.shutdown()

    def test_the_global_registry_is_one_object(self):
        self.assertIs(get_global_registry(), get_global_registry())


class ClientTest(unittest.TestCase):
    def test_nan_for_metrics_not_available_yet(self):
        c = TrainingClient("http://127.0.0.1:9", "t")
        c.call = lambda method, params=None: {"status": "queued", "metrics": {"train_loss": None}}
        s = c.get_status("x")
        self.assertTrue(math.isnan(s["metrics"]["train_loss"]))
        self.assertEqual(f"{s['metrics']['validation_accuracy']:.2%}", "nan%")

    def test_configure_ab_test_with_a_literal_ellipsis_repeats_the_last_call(self):
        c = TrainingClient("http://127.0.0.1:9", "t")
        sent = []
        c.call = lambda method, params=None: sent.append((method, params)) or {"agent_id": "a1"}
        with self.assertRaisesRegex(ValueError, "no earlier configure_ab_test"):
            c.configure_ab_test(..., traffic_split=0.5)
        c.configure_ab_test(baseline_checkpoint="b", experiment_checkpoint="e", traffic_split=0.1)
        self.assertEqual(sent[-1], ("training.configure_ab_test", {"baseline_checkpoint": "b", "experiment_checkpoint": "e", "traffic_split": 0.1, "environment": "production"}))
        c.configure_ab_test(..., traffic_split=0.5)
        self.assertEqual(sent[-1][1], {"baseline_checkpoint": "b", "experiment_checkpoint": "e", "traffic_split": 0.5, "environment": "production", "agent_id": "a1"})
        with self.assertRaisesRegex(ValueError, "experiment_checkpoint and traffic_split"):
            c.configure_ab_test("a1", traffic_split=0.2)

    def test_a_base_url_is_required(self):
        with self.assertRaisesRegex(ValueError, "base_url"):
            TrainingClient(None, "k")


if __name__ == "__main__":
    unittest.main()
