// The TypeScript SDK against a real Berth, started by tests/test_sdk_typescript.py, which
// passes BERTH_URL, BERTH_TOKEN, BERTH_PROBE (an endpoint with a running replica),
// BERTH_FOLDER (a model folder) and BERTH_NEW (a name for an endpoint to create).
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { test } from "node:test";

import {
  Client,
  JobFailed,
  NotFound,
  Unprocessable,
  WebhookVerificationError,
  fromMedia,
  toMedia,
  verifyWebhook,
} from "../dist/index.js";
import { packDir } from "../dist/node.js";

const probe = process.env.BERTH_PROBE;
const berth = new Client(); // BERTH_URL and BERTH_TOKEN

test("sync inference and the health check", async () => {
  const answer = await berth.infer(probe, { prompt: "hi" });
  assert.equal(answer.output.prompt, "hi");
  const byUrl = await berth.infer(`${berth.url}/e/${probe}`, { prompt: "by url" });
  assert.equal(byUrl.output.prompt, "by url");
  assert.equal(await berth.healthCheck(probe), 200);
});

test("errors are typed and carry the request id", async () => {
  await assert.rejects(berth.infer("no-such-endpoint", { prompt: "x" }), (err) => {
    assert.ok(err instanceof NotFound);
    assert.equal(err.status, 404);
    assert.ok(err.requestId && err.code);
    return true;
  });
  await assert.rejects(berth.infer(probe, { prompt: ["not", "text"] }), (err) => {
    assert.ok(err instanceof Unprocessable);
    assert.ok(err.requestId && err.details);
    return true;
  });
});

test("an async job runs to its end and a queued one is cancelled", async () => {
  const slow = await berth.inferAsync(probe, { prompt: "slow", sleep: 1.5 });
  const queued = await berth.inferAsync(probe, { prompt: "behind" });
  const cancelled = await queued.cancel();
  assert.equal(cancelled.status, "cancelled");
  await assert.rejects(queued.result(10), JobFailed);
  const done = await slow.wait(30);
  assert.equal(done.status, "completed");
  const response = await slow.result();
  assert.equal(response.status, 200);
  assert.equal(response.json().output.prompt, "slow");
});

test("a submission sent twice with one key is one job", async () => {
  const key = `ts-${Date.now()}`;
  const a = await berth.inferAsync(probe, { prompt: "once" }, { idempotencyKey: key });
  const b = await berth.inferAsync(probe, { prompt: "once" }, { idempotencyKey: key });
  assert.equal(a.responseId, b.responseId);
});

test("a stream arrives chunk by chunk", async () => {
  const chunks = [];
  for await (const chunk of berth.stream(probe, { prompt: "s", n: 3 }, { path: "/chunks" })) {
    chunks.push(chunk.text);
  }
  assert.deepEqual(chunks, ["s 0", "s 1", "s 2"]);
});

test("an endpoint from a model folder holds its cold start, is updated and deleted", async () => {
  const name = process.env.BERTH_NEW;
  const modelId = await berth.uploadModel(await packDir(process.env.BERTH_FOLDER));
  const created = await berth.createEndpoint(name, { model_id: modelId, min_replicas: 0, max_replicas: 1 });
  assert.equal(created.name, name);
  const answer = await berth.infer(name, { prompt: "cold" }); // waits for the replica to start
  assert.equal(answer.output.prompt, "cold");
  assert.ok((await berth.waitUntilReady(name, 30)).replicas.length >= 1);
  const updated = await berth.updateEndpoint(name, { max_replicas: 2 });
  assert.equal(updated.max_replicas, 2);
  await berth.deleteEndpoint(name);
  await assert.rejects(berth.getEndpoint(name), NotFound);
});

test("a callback is verified with the SDK's helper", async () => {
  const got = [];
  const server = createServer((req, res) => {
    const parts = [];
    req.on("data", (c) => parts.push(c));
    req.on("end", () => {
      got.push({ headers: req.headers, body: new Uint8Array(Buffer.concat(parts)) });
      res.writeHead(204).end();
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  try {
    const url = `http://127.0.0.1:${server.address().port}/hook`;
    const job = await berth.inferAsync(probe, { prompt: "call me" }, { callbackUrl: url });
    await job.wait(30);
    for (let i = 0; i < 300 && !got.length; i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(got.length >= 1, true, "the callback arrived");
    const secret = await berth.webhookSecret();
    await verifyWebhook(got[0].headers, got[0].body, secret);
    const tampered = new Uint8Array([...got[0].body, 32]);
    await assert.rejects(verifyWebhook(got[0].headers, tampered, secret), WebhookVerificationError);
  } finally {
    server.close();
  }
});

test("secrets and tokens", async () => {
  const key = `TS_${Date.now()}`;
  await berth.setSecret(key, "one");
  await berth.setSecret(key, "two");
  assert.ok((await berth.listSecrets()).includes(key));
  await berth.deleteSecret(key);
  const token = await berth.createToken(`ts-${Date.now()}`, ["inference"]);
  assert.ok(token.token);
  assert.ok((await berth.listTokens()).some((t) => t.id === token.id));
  await berth.deleteToken(token.id);
});

test("media round trip", () => {
  const raw = new Uint8Array([0, 1, 2, 250, 255]);
  assert.deepEqual(fromMedia(toMedia(raw)), raw);
});

test("assets upload, list and delete; a tune runs to its end", async () => {
  const tag = `${Date.now()}`;
  const pairs = new TextEncoder().encode(
    '{"a": "A ship in the harbour", "b": "A boat at the dock", "label": 1}\n' +
      '{"a": "A ship in the harbour", "b": "Two eggs and flour", "label": 0}\n',
  );
  const asset = await berth.uploadAsset(pairs, `ts-pairs-${tag}`, { data: { file_format: "jsonl" } });
  assert.equal(asset.status, "ready");
  assert.equal(asset.size_bytes, pairs.byteLength);
  assert.deepEqual((await berth.listAssets({ name: asset.name })).map((a) => a.id), [asset.id]);
  assert.equal((await berth.getAsset(asset.name)).id, asset.id);
  await assert.rejects(berth.uploadAsset(new Uint8Array([1]), "bad name!"), Unprocessable);

  // An asset the server fetches from a URL (served here, on 127.0.0.1: the tests' Berth
  // allows it), and one whose content is not what its data says.
  const server = createServer((req, res) => {
    res.writeHead(200, { "content-type": "application/octet-stream" });
    res.end(req.url === "/pairs.jsonl" ? pairs : "not json lines {");
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const served = `http://127.0.0.1:${server.address().port}`;
  try {
    const fetched = await berth.importAsset(`${served}/pairs.jsonl`, `ts-url-${tag}`, {
      data: { file_format: "jsonl" },
    });
    assert.equal(fetched.status, "ready");
    assert.equal(fetched.size_bytes, pairs.byteLength);
    await assert.rejects(
      berth.importAsset(`${served}/other`, `ts-url-bad-${tag}`, { data: { file_format: "jsonl" } }),
      (err) => err instanceof Unprocessable && /not JSON lines/.test(err.message),
    );
  } finally {
    server.close();
  }

  const tune = await berth.createTune(`ts-tune-${tag}`, [asset.id], { steps: 30, captions: { [asset.id]: "pairs" } });
  assert.equal(tune.status, "pending");
  assert.deepEqual(tune.details.files, [{ file_id: asset.id, caption: "pairs" }]);
  assert.equal(tune.details.base_checkpoint.checkpoint_id, "all-minilm-l6-v2");
  await assert.rejects(
    berth.createTune(`ts-sdxl-${tag}`, [asset.id], { engine: "image/stable-diffusion-xl-v1-0" }),
    (err) => err instanceof Unprocessable && /BERTH_TRAINERS/.test(err.message),
  );
  const done = await berth.waitForTune(tune.id, 600);
  assert.equal(done.status, "succeeded", JSON.stringify(done));
  assert.equal((await berth.getAsset(done.output_lora_ids[0])).asset_type, "lora");
  assert.deepEqual((await berth.listTunes({ name: tune.name })).map((t) => t.id), [tune.id]);
  await berth.deleteTune(tune.id);
  await assert.rejects(berth.getTune(tune.id), NotFound);
  await berth.deleteAsset(asset.id);
});
