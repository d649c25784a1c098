// Checking a callback's Standard Webhooks signature with Web Crypto (Node 18+ and browsers).

export class WebhookVerificationError extends Error {}

const TOLERANCE = 300; // seconds a delivery's timestamp may be away from now (replays)

function base64ToBytes(text: string): Uint8Array<ArrayBuffer> {
  const raw = atob(text);
  const out = new Uint8Array(new ArrayBuffer(raw.length));
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

function bytesToBase64(bytes: Uint8Array): string {
  let raw = "";
  for (const b of bytes) raw += String.fromCharCode(b);
  return btoa(raw);
}

function equal(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

/** Throws WebhookVerificationError unless `body` came from Berth signed with `secret`
 * (`whsec_…`, from `webhookSecret()`) within five minutes. Header names in any case. */
export async function verifyWebhook(
  headers: Record<string, string> | Headers,
  body: Uint8Array | string,
  secret: string,
  now: number = Date.now() / 1000,
): Promise<void> {
  const get = (name: string): string | undefined => {
    if (headers instanceof Headers) return headers.get(name) ?? undefined;
    const key = Object.keys(headers).find((k) => k.toLowerCase() === name);
    return key === undefined ? undefined : headers[key];
  };
  const id = get("webhook-id");
  const timestamp = Number(get("webhook-timestamp"));
  const given = (get("webhook-signature") ?? "").split(" ").filter(Boolean);
  if (!id || !Number.isInteger(timestamp) || !given.length) {
    throw new WebhookVerificationError("missing or malformed webhook headers");
  }
  if (Math.abs(now - timestamp) > TOLERANCE) {
    throw new WebhookVerificationError("the timestamp is outside the tolerance");
  }
  const payload = typeof body === "string" ? new TextEncoder().encode(body) : body;
  const prefix = new TextEncoder().encode(`${id}.${timestamp}.`);
  const signed = new Uint8Array(new ArrayBuffer(prefix.length + payload.length));
  signed.set(prefix);
  signed.set(payload, prefix.length);
  const key = await crypto.subtle.importKey(
    "raw",
    base64ToBytes(secret.replace(/^whsec_/, "")),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const mac = new Uint8Array(await crypto.subtle.sign("HMAC", key, signed));
  const expected = `v1,${bytesToBase64(mac)}`;
  if (!given.some((sig) => equal(sig, expected))) {
    throw new WebhookVerificationError("no signature matches");
  }
}

export { base64ToBytes, bytesToBase64 };
