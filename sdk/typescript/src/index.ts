// Berth's TypeScript SDK: fetch-based, no runtime dependencies, for Node 18+ and browsers.
import {
  BerthError,
  ConnectionFailed,
  JobFailed,
  NotFound,
  RateLimited,
  Unavailable,
  Unprocessable,
  errorFor,
} from "./errors.js";
import { sseEvents } from "./sse.js";
import type {
  JobStatus,
  Replica,
  Endpoint,
  Job,
  Event,
  Asset,
  Tune,
  AssetOptions,
  TuneOptions,
  Token,
} from "./types.js";

export * from "./errors.js";
export * from "./types.js";
export { fromMedia, toMedia } from "./media.js";
export { verifyWebhook, WebhookVerificationError } from "./webhooks.js";

export interface StoredResponse {
  status: number;
  headers: Headers;
  body: Uint8Array;
  json(): unknown;
  text(): string;
}

export interface ClientOptions {
  /** The API's URL (default: BERTH_URL in Node). */
  url?: string;
  /** A bearer token (default: BERTH_TOKEN in Node). */
  token?: string;
  /** Tries after the first for calls that may safely be sent again (default 3). */
  retries?: number;
  /** A fetch to use instead of the global one. */
  fetch?: typeof fetch;
}

export interface InferOptions {
  path?: string;
  headers?: Record<string, string>;
  /** Seconds the request may take in all (X-Berth-Deadline). */
  deadline?: number;
  signal?: AbortSignal;
}

export interface AsyncOptions extends InferOptions {
  callbackUrl?: string;
  idempotencyKey?: string;
}

interface Call {
  method: string;
  url: string;
  body?: unknown;
  raw?: BodyInit;
  headers?: Record<string, string>;
  /** May be sent again after a failure (changes nothing, or carries an idempotency key). */
  safe?: boolean;
  signal?: AbortSignal | undefined;
}

const env = (name: string): string | undefined =>
  (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env?.[name];

const sleep = (seconds: number) => new Promise((r) => setTimeout(r, seconds * 1000));

/** The base checkpoint a tune names by default, by engine (the trainers start from their
 * engine's base model whatever the id). */
const CHECKPOINTS: Record<string, string> = {
  "text/all-minilm-l6-v2": "all-minilm-l6-v2",
  "image/stable-diffusion-xl-v1-0": "octoai:default-sdxl",
};

function retryAfter(resp: Response): number | undefined {
  const value = resp.headers.get("retry-after");
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, (at - Date.now()) / 1000);
}

async function check(resp: Response): Promise<Response> {
  if (resp.status < 400) return resp;
  const text = await resp.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: the text as it came
  }
  throw errorFor(
    resp.status,
    body,
    resp.headers.get("x-user-request-id") ?? undefined,
    retryAfter(resp),
  );
}

async function answer(resp: Response): Promise<unknown> {
  const kind = resp.headers.get("content-type") ?? "";
  if (kind.includes("json")) return resp.json();
  if (kind.startsWith("text/")) return resp.text();
  return new Uint8Array(await resp.arrayBuffer());
}

function pollInterval(tries: number): number {
  return Math.min(2, 0.05 * 1.6 ** tries);
}

export class Client {
  readonly url: string;
  private readonly token: string | undefined;
  private readonly retries: number;
  private readonly fetcher: typeof fetch;

  constructor(options: ClientOptions = {}) {
    const url = options.url ?? env("BERTH_URL");
    if (!url) throw new Error("no Berth API given: pass {url} or set BERTH_URL");
    this.url = url.replace(/\/+$/, "");
    this.token = options.token ?? env("BERTH_TOKEN");
    this.retries = options.retries ?? 3;
    this.fetcher = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  // -- the one place a call is sent -----------------------------------------------------------

  private async send(call: Call): Promise<Response> {
    const headers: Record<string, string> = { ...(call.headers ?? {}) };
    if (this.token) headers["authorization"] = `Bearer ${this.token}`;
    let body: BodyInit | undefined = call.raw;
    if (call.body !== undefined) {
      headers["content-type"] = "application/json";
      body = JSON.stringify(call.body);
    }
    let resp: Response;
    try {
      resp = await this.fetcher(call.url, {
        method: call.method,
        headers,
        body: body ?? null,
        signal: call.signal ?? null,
      });
    } catch (exc) {
      if ((exc as Error).name === "AbortError") throw exc;
      throw new ConnectionFailed(`${(exc as Error).message}`, { status: 0, body: exc });
    }
    return check(resp);
  }

  /** Sends `call`, again after a failure only where that is safe: any call refused with a
   * 429, a safe call also after a lost connection or a 503 (Retry-After, else back-off). */
  private async call(call: Call): Promise<Response> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.send(call);
      } catch (exc) {
        const again =
          exc instanceof RateLimited ||
          (call.safe === true && (exc instanceof ConnectionFailed || exc instanceof Unavailable));
        const wait = exc instanceof BerthError ? exc.retryAfter : undefined;
        if (!again || attempt >= this.retries || (wait ?? 0) > 30) throw exc;
        await sleep(wait ?? Math.random() * Math.min(8, 0.25 * 2 ** attempt));
      }
    }
  }

  private api(path: string): string {
    return `${this.url}${path}`;
  }

  /** An endpoint's URL from its name, or the URL itself. */
  endpointUrl(endpoint: string, path = ""): string {
    const base = /^https?:\/\//.test(endpoint)
      ? endpoint.replace(/\/+$/, "")
      : `${this.url}/e/${encodeURIComponent(endpoint)}`;
    return base + (path && !path.startsWith("/") ? `/${path}` : path);
  }

  private async json<T>(call: Call): Promise<T> {
    return (await (await this.call(call)).json()) as T;
  }

  private static inferHeaders(options: AsyncOptions): Record<string, string> {
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(options.headers ?? {})) headers[k.toLowerCase()] = v;
    if (options.deadline !== undefined) headers["x-berth-deadline"] = String(options.deadline);
    if (options.callbackUrl !== undefined) headers["x-berth-callback-url"] = options.callbackUrl;
    return headers;
  }

  // -- inference ------------------------------------------------------------------------------

  /** The model's answer (JSON decoded; text or bytes otherwise). */
  async infer(endpoint: string, inputs: unknown, options: InferOptions = {}): Promise<unknown> {
    const resp = await this.call({
      method: "POST",
      url: this.endpointUrl(endpoint, options.path ?? "/infer"),
      body: inputs,
      headers: Client.inferHeaders(options),
      signal: options.signal,
    });
    return answer(resp);
  }

  /** Queue the request as a job; its handle. Sent with an Idempotency-Key (the one given,
   * else a new one), so a retry after a lost answer makes no second job. */
  async inferAsync(endpoint: string, inputs: unknown, options: AsyncOptions = {}): Promise<JobHandle> {
    const headers = Client.inferHeaders(options);
    headers["x-octoai-async"] = "1";
    headers["idempotency-key"] = options.idempotencyKey ?? `berth-sdk-${crypto.randomUUID()}`;
    const accepted = await this.json<{ response_id: string }>({
      method: "POST",
      url: this.endpointUrl(endpoint, options.path ?? "/infer"),
      body: inputs,
      headers,
      safe: true,
      signal: options.signal,
    });
    return new JobHandle(this, accepted.response_id);
  }

  /** The model's server-sent events as they come (each event's data, JSON decoded). */
  async *stream(endpoint: string, inputs: unknown, options: InferOptions = {}): AsyncGenerator<unknown> {
    const headers = Client.inferHeaders(options);
    headers["accept"] = "text/event-stream";
    const resp = await this.call({
      method: "POST",
      url: this.endpointUrl(endpoint, options.path ?? "/infer"),
      body: inputs,
      headers,
      signal: options.signal,
    });
    if (!resp.body) return;
    yield* sseEvents(resp.body);
  }

  /** The endpoint's health check status (200 when a replica answers it). */
  async healthCheck(endpoint: string, path = "/healthcheck"): Promise<number> {
    try {
      return (await this.call({ method: "GET", url: this.endpointUrl(endpoint, path), safe: true })).status;
    } catch (exc) {
      if (exc instanceof BerthError && exc.status) return exc.status;
      throw exc;
    }
  }

  // -- jobs -----------------------------------------------------------------------------------

  job(responseId: string): JobHandle {
    return new JobHandle(this, responseId);
  }

  getJob(responseId: string): Promise<Job> {
    return this.json({ method: "GET", url: this.api(`/v1/requests/${responseId}`), safe: true });
  }

  cancelJob(responseId: string): Promise<Job> {
    return this.json({ method: "DELETE", url: this.api(`/v1/requests/${responseId}`), safe: true });
  }

  async getResponse(responseId: string): Promise<StoredResponse> {
    const url = this.api(`/v1/responses/${responseId}`);
    let resp: Response;
    try {
      resp = await this.call({ method: "GET", url, safe: true });
    } catch (exc) {
      // A replica's own error answer is its response, not Berth's error.
      if (!(exc instanceof BerthError) || !exc.status) throw exc;
      const again = await this.fetcher(url, {
        headers: this.token ? { authorization: `Bearer ${this.token}` } : {},
      });
      if (!again.headers.has("x-berth-replica")) throw exc;
      resp = again;
    }
    const body = new Uint8Array(await resp.arrayBuffer());
    const text = () => new TextDecoder().decode(body);
    return { status: resp.status, headers: resp.headers, body, text, json: () => JSON.parse(text()) };
  }

  listJobs(endpoint?: string, limit = 50): Promise<Job[]> {
    const query = new URLSearchParams({ limit: String(limit) });
    if (endpoint) query.set("endpoint", endpoint);
    return this.json({ method: "GET", url: this.api(`/v1/requests?${query}`), safe: true });
  }

  // -- endpoints ------------------------------------------------------------------------------

  /** Upload a model folder packed as tar.gz (`packDir` from "@berth/client/node"); its id. */
  async uploadModel(archive: Uint8Array | Blob): Promise<string> {
    const resp = await this.json<{ model_id: string }>({
      method: "POST",
      url: this.api("/v1/models"),
      raw: archive as BodyInit,
      headers: { "content-type": "application/gzip" },
      safe: true, // the same content is the same digest: stored once
    });
    return resp.model_id;
  }

  /** An endpoint from an example, an image or an uploaded model (`model_id`), with any of
   * its settings. */
  createEndpoint(name: string, fields: Record<string, unknown>): Promise<Endpoint> {
    return this.json({ method: "POST", url: this.api("/v1/endpoint"), body: { ...fields, name } });
  }

  getEndpoint(name: string): Promise<Endpoint> {
    return this.json({ method: "GET", url: this.api(`/v1/endpoint/${name}`), safe: true });
  }

  listEndpoints(): Promise<Endpoint[]> {
    return this.json({ method: "GET", url: this.api("/v1/endpoints"), safe: true });
  }

  updateEndpoint(name: string, fields: Record<string, unknown>): Promise<Endpoint> {
    return this.json({ method: "PATCH", url: this.api(`/v1/endpoint/${name}`), body: fields, safe: true });
  }

  async deleteEndpoint(name: string): Promise<void> {
    await this.call({ method: "DELETE", url: this.api(`/v1/endpoint/${name}`), safe: true });
  }

  /** The endpoint once a replica runs; throws if its replicas keep failing to start. */
  async waitUntilReady(name: string, timeoutSeconds = 300): Promise<Endpoint> {
    const deadline = Date.now() + timeoutSeconds * 1000;
    for (let tries = 0; ; tries++) {
      const endpoint = await this.getEndpoint(name);
      if (endpoint.replicas.some((r) => r.status === "running")) return endpoint;
      if (endpoint.failing) throw new BerthError(`endpoint ${name} is failing: ${endpoint.failing.reason}`, { status: 0 });
      if (Date.now() > deadline) throw new Error(`endpoint ${name} had no running replica in ${timeoutSeconds} s`);
      await sleep(pollInterval(tries));
    }
  }

  events(name: string, maxLines = 100): Promise<Event[]> {
    return this.json({ method: "GET", url: this.api(`/v1/events/${name}?max_lines=${maxLines}`), safe: true });
  }

  logs(name: string, maxLines = 100): Promise<Record<string, unknown>[]> {
    return this.json({ method: "GET", url: this.api(`/v1/logs/${name}?max_lines=${maxLines}`), safe: true });
  }

  // -- access ---------------------------------------------------------------------------------

  createToken(name: string, scopes: string[], options: { endpoints?: string[]; expiresIn?: number } = {}): Promise<Token> {
    const body: Record<string, unknown> = { name, scopes };
    if (options.endpoints) body["endpoints"] = options.endpoints;
    if (options.expiresIn) body["expires_in"] = options.expiresIn;
    return this.json({ method: "POST", url: this.api("/v1/tokens"), body });
  }

  listTokens(): Promise<Token[]> {
    return this.json({ method: "GET", url: this.api("/v1/tokens"), safe: true });
  }

  async deleteToken(id: string): Promise<void> {
    await this.call({ method: "DELETE", url: this.api(`/v1/tokens/${id}`), safe: true });
  }

  /** Create the secret, or change its value (replicas get it at their next start). */
  async setSecret(key: string, value: string): Promise<void> {
    try {
      await this.call({ method: "PUT", url: this.api(`/v1/secret/${key}`), body: { value }, safe: true });
    } catch (exc) {
      if (!(exc instanceof NotFound)) throw exc;
      await this.call({ method: "POST", url: this.api("/v1/secret"), body: { key, value } });
    }
  }

  listSecrets(): Promise<string[]> {
    return this.json({ method: "GET", url: this.api("/v1/secrets"), safe: true });
  }

  async deleteSecret(key: string): Promise<void> {
    await this.call({ method: "DELETE", url: this.api(`/v1/secret/${key}`), safe: true });
  }

  // -- assets ---------------------------------------------------------------------------------

  /** Upload bytes as a new asset, its sha256 and size declared so that the server checks
   * them; the asset, ready. */
  async uploadAsset(content: Uint8Array | Blob, name: string, options: AssetOptions = {}): Promise<Asset> {
    const bytes = content instanceof Blob ? new Uint8Array(await content.arrayBuffer()) : content;
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as BufferSource));
    const assetType = options.assetType ?? "file";
    const body: Record<string, unknown> = {
      name,
      asset_type: assetType,
      data: { ...(options.data ?? {}), asset_type: assetType },
      sha256: Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join(""),
      size_bytes: bytes.byteLength,
    };
    if (options.description !== undefined) body["description"] = options.description;
    if (options.isPublic !== undefined) body["is_public"] = options.isPublic;
    const made = await this.json<{ asset: Asset; transfer_api: { put_url: string } }>({
      method: "POST",
      url: this.api("/v1/assets"),
      body,
    });
    let put: Response;
    try {
      // The presigned URL is its own authority: no token goes with it.
      put = await this.fetcher(made.transfer_api.put_url, { method: "PUT", body: bytes as BodyInit });
    } catch (exc) {
      throw new ConnectionFailed(`${(exc as Error).message}`, { status: 0, body: exc });
    }
    await check(put);
    await this.call({
      method: "POST",
      url: this.api(`/v1/assets/${made.asset.id}/complete-upload`),
      body: {},
      safe: true,
    });
    return this.getAsset(made.asset.id);
  }

  /** A new asset that the server fetches from `url` (http or https; public addresses only
   * unless the server allows others); the asset once ready. Throws Unprocessable with the
   * server's reason when it ends rejected or in error. */
  async importAsset(url: string, name: string, options: AssetOptions & { timeoutSeconds?: number } = {}): Promise<Asset> {
    const assetType = options.assetType ?? "file";
    const body: Record<string, unknown> = {
      name,
      asset_type: assetType,
      data: { ...(options.data ?? {}), asset_type: assetType },
      url,
    };
    if (options.description !== undefined) body["description"] = options.description;
    if (options.isPublic !== undefined) body["is_public"] = options.isPublic;
    const made = await this.json<{ asset: Asset }>({ method: "POST", url: this.api("/v1/assets"), body });
    const deadline = Date.now() + (options.timeoutSeconds ?? 3600) * 1000;
    for (let tries = 0; ; tries++) {
      const asset = await this.getAsset(made.asset.id);
      if (asset.status === "ready") return asset;
      if (asset.status !== "uploaded") {
        throw new Unprocessable(`asset ${name} is ${asset.status}: ${asset.status_details}`, { status: 422, body: asset });
      }
      if (Date.now() > deadline) throw new Error(`asset ${name} was not fetched in ${options.timeoutSeconds ?? 3600} s`);
      await sleep(pollInterval(tries));
    }
  }

  /** An asset by id, name or owner/name. */
  async getAsset(key: string): Promise<Asset> {
    const got = await this.json<{ asset: Asset }>({ method: "GET", url: this.api(`/v1/assets/${key}`), safe: true });
    return got.asset;
  }

  /** Assets, newest first, with OctoAI's filters (name, asset_type, engine, limit, ...). */
  async listAssets(filters: Record<string, string | number | boolean> = {}): Promise<Asset[]> {
    const query = new URLSearchParams(Object.entries(filters).map(([k, v]) => [k, String(v)]));
    const got = await this.json<{ data: Asset[] }>({ method: "GET", url: this.api(`/v1/assets?${query}`), safe: true });
    return got.data;
  }

  async deleteAsset(id: string): Promise<void> {
    await this.call({ method: "DELETE", url: this.api(`/v1/assets/${id}`), safe: true });
  }

  // -- fine-tuning ----------------------------------------------------------------------------

  /** Start a LoRA tune on file assets (ids); it runs on the fleet. `engine`: the trainer,
   * `text/all-minilm-l6-v2` (pairs, the default) or `image/stable-diffusion-xl-v1-0`
   * (pictures, each captioned by `captions[fileId]` or the trigger words). */
  createTune(name: string, files: string[], options: TuneOptions = {}): Promise<Tune> {
    const engine = options.engine ?? "text/all-minilm-l6-v2";
    const details: Record<string, unknown> = {
      tune_type: "lora_tune",
      base_checkpoint: { checkpoint_id: options.checkpointId ?? CHECKPOINTS[engine] ?? engine, engine },
      files: files.map((id) => (options.captions?.[id] !== undefined ? { file_id: id, caption: options.captions[id] } : { file_id: id })),
      steps: options.steps ?? 300,
      trigger_words: options.triggerWords ?? [],
    };
    if (options.seed !== undefined) details["seed"] = options.seed;
    return this.json({ method: "POST", url: this.api("/v1/tune"), body: { name, details } });
  }

  getTune(id: string): Promise<Tune> {
    return this.json({ method: "GET", url: this.api(`/v1/tune/${id}`), safe: true });
  }

  async listTunes(filters: Record<string, string | number> = {}): Promise<Tune[]> {
    const query = new URLSearchParams(Object.entries(filters).map(([k, v]) => [k, String(v)]));
    return (await this.json<{ data: Tune[] }>({ method: "GET", url: this.api(`/v1/tunes?${query}`), safe: true })).data;
  }

  cancelTune(id: string): Promise<Tune> {
    return this.json({ method: "POST", url: this.api(`/v1/tune/${id}/cancel`), safe: true });
  }

  async deleteTune(id: string): Promise<void> {
    await this.call({ method: "DELETE", url: this.api(`/v1/tune/${id}`), safe: true });
  }

  /** The tune once it has ended (succeeded, failed or cancelled). */
  async waitForTune(id: string, timeoutSeconds = 3600): Promise<Tune> {
    const deadline = Date.now() + timeoutSeconds * 1000;
    for (let tries = 0; ; tries++) {
      const tune = await this.getTune(id);
      if (["succeeded", "failed", "cancelled"].includes(tune.status)) return tune;
      if (Date.now() > deadline) throw new Error(`tune ${id} has not ended in ${timeoutSeconds} s`);
      await sleep(pollInterval(tries));
    }
  }

  /** The secret this token's callbacks are signed with (for `verifyWebhook`). */
  async webhookSecret(): Promise<string> {
    return (await this.json<{ secret: string }>({ method: "GET", url: this.api("/v1/webhook-secret"), safe: true })).secret;
  }
}

/** An async request: its state, its end, its response, its cancel. */
export class JobHandle {
  last: Job | undefined;

  constructor(
    readonly client: Client,
    readonly responseId: string,
  ) {}

  async status(): Promise<Job> {
    this.last = await this.client.getJob(this.responseId);
    return this.last;
  }

  /** Its state once it has ended; throws past `timeoutSeconds`. */
  async wait(timeoutSeconds?: number): Promise<Job> {
    const deadline = timeoutSeconds === undefined ? undefined : Date.now() + timeoutSeconds * 1000;
    for (let tries = 0; ; tries++) {
      const job = await this.status();
      if (job.status !== "pending" && job.status !== "running") return job;
      if (deadline !== undefined && Date.now() >= deadline) {
        throw new Error(`job ${this.responseId} has not ended (${job.status})`);
      }
      await sleep(pollInterval(tries));
    }
  }

  /** The replica's response once completed; JobFailed if it ended otherwise. */
  async result(timeoutSeconds?: number): Promise<StoredResponse> {
    const job = await this.wait(timeoutSeconds);
    if (job.status !== "completed") throw new JobFailed(job);
    return this.client.getResponse(this.responseId);
  }

  async cancel(): Promise<Job> {
    this.last = await this.client.cancelJob(this.responseId);
    return this.last;
  }
}
