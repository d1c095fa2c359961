"""Unit tests of the SDK that need no server: configs, webhook signatures, the reward server."""

import json
import math
import os
import sys
import time
import unittest
from decimal import Decimal
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from agentcore.sdk import HTTPError, TrainingClient  # noqa: E402
from agentcore.training import ConfigError, GRPOConfig, RewardRegistry, get_global_registry  # noqa: E402
from agentcore.webhooks import WebhookVerificationError, sign, verify_webhook  # noqa: E402


class ConfigTest(unittest.TestCase):
    def test_only_given_fields_are_sent_and_money_is_a_decimal_string(self):
        c = GRPOConfig(n_iterations=500, batch_size=16, max_budget_usd=50.00, learning_rate=0.0001)
        self.assertEqual(c.to_dict(), {"n_iterations": 500, "batch_size": 16, "max_budget_usd": "50.0", "learning_rate": 0.0001})
        self.assertEqual(c.batch_size, 16)

    def test_unknown_fields_are_refused_by_name(self):
        with self.assertRaisesRegex(TypeError, "unknown field `batch_sise` \\(did you mean `batch_size`\\?\\)"):
            GRPOConfig(batch_sise=3)
        c = GRPOConfig()
        with self.assertRaisesRegex(TypeError, "learning_rat"):
            c.learning_rat = 0.1

    def test_defaults_read_as_the_servers(self):
        c = GRPOConfig()
        self.assertEqual((c.batch_size, c.n_trajectories_per_query, c.learning_rate), (16, 8, 0.0001))
        self.assertEqual((c.loss_type, c.top_k, c.max_budget_usd), ("dapo", None, Decimal("100.00")))
        self.assertEqual(c.reward_shaping["success_reward"], 1.0)
        self.assertEqual(c.to_dict(), {}, "nothing given, nothing sent: the server's defaults apply")

    def test_the_troubleshooting_snippets_assign_and_the_value_is_sent(self):
        config = GRPOConfig(n_iterations=100)
        config.learning_rate = 0.0005
        config.n_trajectories_per_query = 16
        config.batch_size = 8
        config.max_steps_per_trajectory = 10
        self.assertEqual(config.to_dict(), {"n_iterations": 100, "learning_rate": 0.0005, "n_trajectories_per_query": 16, "batch_size": 8, "max_steps_per_trajectory": 10})
        del config.batch_size
        self.assertNotIn("batch_size", config.to_dict())
        self.assertEqual(config.batch_size, 16)

    def test_out_of_range_values_are_refused_with_the_servers_rule_and_value(self):
        with self.assertRaises(ConfigError) as e:
            GRPOConfig(batch_size=500)
        self.assertEqual(str(e.exception), "invalid config: `batch_size` must be in 1..=128, got 500")
        self.assertEqual((e.exception.field, e.exception.value), ("batch_size", "500"))
        c = GRPOConfig()
        with self.assertRaisesRegex(ConfigError, "^invalid config: `learning_rate` must be > 0 and <= 1, got 2$"):
            c.learning_rate = 2.0
        self.assertEqual(c.learning_rate, 0.0001, "a refused assignment changes nothing")
        with self.assertRaisesRegex(ConfigError, "must be greater than `reward_shaping.failure_reward` \\(1\\)"):
            GRPOConfig(reward_shaping={"success_reward": 0.5, "failure_reward": 1.0})
        with self.assertRaisesRegex(ConfigError, "`loss_type` must be one of grpo, dapo, dr_grpo, gspo, got ppo"):
            GRPOConfig(loss_type="ppo")
        with self.assertRaisesRegex(TypeError, "`batch_size` must be an integer, got '8'"):
            GRPOConfig(batch_size="8")
        with self.assertRaisesRegex(TypeError, "must be an integer, got True"):
            GRPOConfig(seed=True)

    def test_to_dict_and_from_dict_round_trip(self):
        c = GRPOConfig(n_iterations=7, max_budget_usd="12.50", top_k=40, reward_shaping={"enabled": True}, loss_type="gspo")
        d = c.to_dict()
        self.assertEqual(d["max_budget_usd"], "12.50")
        self.assertEqual(GRPOConfig.from_dict(json.loads(json.dumps(d))), c)
        full = c.to_dict(all_fields=True)
        self.assertEqual((full["batch_size"], full["reward_shaping"]["enabled"], full["epsilon_high"]), (16, True, None))
        self.assertEqual(GRPOConfig.from_dict(full), c)

    def test_the_config_loads_from_the_clis_job_files(self):
        import tempfile

        root = os.path.join(os.path.dirname(__file__), "..", "..")
        with tempfile.TemporaryDirectory() as tmp:
            job = os.path.join(tmp, "job.json")
            with open(job, "w") as f:
                json.dump({"grpo": {"n_iterations": 3, "batch_size": 4}, "n_tasks": 40}, f)
            self.assertEqual(GRPOConfig.from_file(job).to_dict(), {"n_iterations": 3, "batch_size": 4})
            toml = os.path.join(tmp, "c.toml")
            with open(toml, "w") as f:
                f.write("batch_size = 500\n")
            with self.assertRaisesRegex(ConfigError, "got 500"):
                GRPOConfig.from_file(toml)
        try:
            import yaml  # noqa: F401
        except ImportError:
            self.skipTest("PyYAML is not installed: the YAML half is skipped (pip install 'agentcore[yaml]')")
        c = GRPOConfig.from_file(os.path.join(root, "examples", "configs", "prompt-job.yaml"))
        self.assertEqual((c.n_iterations, c.batch_size, c.n_trajectories_per_query), (30, 8, 4))
        q = GRPOConfig.from_file(os.path.join(root, "examples", "configs", "quickstart.yaml"))
        self.assertEqual((q.n_iterations, q.loss_type, q.max_budget_usd), (100, "dapo", Decimal("50.0")))


class _Scripted:
    """A loopback HTTP server answering POSTs from a script of (status, headers, body)."""

    def __init__(self, script):
        import http.server
        import threading

        self.script, self.requests = list(script), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                outer.requests.append((time.monotonic(), json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
                status, headers, body = outer.script.pop(0)
                data = json.dumps(body).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _ok(result):
    return (200, {}, {"jsonrpc": "2.0", "id": 1, "result": result})


class TransportTest(unittest.TestCase):
    def test_a_rate_limited_call_waits_for_retry_after_and_is_sent_again(self):
        srv = _Scripted([(429, {"Retry-After": "1"}, {"error": "rate limited"}), _ok({"job_id": "j", "status": "queued"})])
        try:
            client = TrainingClient(srv.url, "k", backoff=0.01)
            result = client.start_training("a", GRPOConfig(n_iterations=2), [{"query": "q", "expected_outcome": {}}])
            self.assertEqual((result["job_id"], result.status), ("j", "queued"))
            (t0, first), (t1, second) = srv.requests
            self.assertGreaterEqual(t1 - t0, 1.0, "Retry-After: 1 is honoured")
            self.assertEqual(first["params"], second["params"])
            self.assertEqual(first["params"]["config"], {"n_iterations": 2})
        finally:
            srv.close()

    def test_retries_are_bounded_and_a_bad_gateway_is_retried_only_for_reads(self):
        srv = _Scripted([(503, {}, {})] * 3)
        try:
            with self.assertRaises(HTTPError) as e:
                TrainingClient(srv.url, "k", max_retries=2, backoff=0.01).get_status("j")
            self.assertEqual((e.exception.status, len(srv.requests)), (503, 3))
        finally:
            srv.close()
        srv = _Scripted([(502, {}, {}), (502, {}, {}), _ok({"status": "running", "metrics": {"train_loss": None}})])
        try:
            client = TrainingClient(srv.url, "k", backoff=0.01)
            with self.assertRaises(HTTPError):
                client.cancel("j")  # it may have reached the service: not sent twice
            self.assertEqual(len(srv.requests), 1)
            status = client.get_status("j")
            self.assertEqual((status.status, len(srv.requests)), ("running", 3))
            self.assertTrue(math.isnan(status.metrics.train_loss))
        finally:
            srv.close()

    def test_each_contract_error_code_raises_its_exception(self):
        from agentcore import sdk

        srv = _Scripted([(200, {}, {"jsonrpc": "2.0", "id": 1, "error": {"code": c, "message": "m"}}) for c in sdk.ERRORS] +
                        [(200, {}, {"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": "other"}})])
        try:
            client = TrainingClient(srv.url, "k")
            for code, cls in sdk.ERRORS.items():
                with self.assertRaises(cls) as e:
                    client.call("x")
                self.assertEqual((e.exception.code, type(e.exception)), (code, cls))
                self.assertIsInstance(e.exception, sdk.AgentcoreError)
            with self.assertRaises(sdk.AgentcoreError) as e:
                client.call("x")
            self.assertIs(type(e.exception), sdk.AgentcoreError)
            self.assertIs(sdk.ERRORS[-40006], sdk.DeploymentGateError)
            self.assertIs(sdk.ERRORS[-32001], sdk.NotFound)
        finally:
            srv.close()


class StreamTest(unittest.TestCase):
    def test_a_dropped_socket_reconnects_and_nothing_is_yielded_twice(self):
        import base64
        import hashlib
        import socket
        import struct
        import threading

        def frame(opcode, payload):
            n = len(payload)
            head = struct.pack("!BB", 0x80 | opcode, n) if n < 126 else struct.pack("!BBH", 0x80 | opcode, 126, n)
            return head + payload

        msgs = [{"type": "status", "status": "running"}, {"type": "progress", "iteration": 1, "total": 2, "loss": 0.5},
                {"type": "progress", "iteration": 2, "total": 2, "loss": 0.4}, {"type": "status", "status": "completed"}]
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        auth = []

        def serve():
            for conn_no in range(2):
                conn, _ = listener.accept()
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(4096)
                lines = head.decode().split("\r\n")
                auth.append([ln for ln in lines if ln.lower().startswith("authorization:")])
                key = [ln.split(":", 1)[1].strip() for ln in lines if ln.lower().startswith("sec-websocket-key")][0]
                accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
                conn.sendall(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n".encode())
                # The first connection drops after two messages; the second replays them all.
                for m in msgs[:2] if conn_no == 0 else msgs:
                    conn.sendall(frame(0x1, json.dumps(m).encode()))
                if conn_no == 1:
                    conn.sendall(frame(0x9, b"hi") + frame(0x8, b""))
                    conn.recv(1024)
                conn.close()

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        client = TrainingClient(f"http://127.0.0.1:{listener.getsockname()[1]}", "tok", backoff=0.01)
        got = list(client.stream("job-1"))
        t.join(5)
        listener.close()
        self.assertEqual([dict(m) for m in got], msgs)
        self.assertEqual(auth, [["Authorization: Bearer tok"]] * 2)
        self.assertEqual(got[1].loss, 0.5)


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
