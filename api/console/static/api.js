// The API as the console calls it: the token from this tab's sessionStorage, sent as a
// bearer header (never in a URL, never in a cookie); errors as ApiError with the API's
// {"error": {code, message, details}}.

const KEY = "berth.token";

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = error?.code || "http_error";
    this.details = error?.details;
  }

  static async of(resp) {
    let body = null;
    try {
      body = await resp.json();
    } catch {
      // not JSON: the status says enough
    }
    const error = body?.error || (body?.detail ? { message: String(body.detail) } : null);
    return new ApiError(resp.status, error);
  }

  // Field name -> message, from a 422's details (pydantic's loc) or a "field: why" message.
  fields() {
    const out = {};
    for (const d of Array.isArray(this.details) ? this.details : []) {
      const loc = (d.loc || []).filter((p) => p !== "body");
      if (loc.length) out[loc[0]] = d.msg;
    }
    const m = /^([a-z_]+): (.*)$/.exec(this.message || "");
    if (!Object.keys(out).length && m) out[m[1]] = m[2];
    return out;
  }
}

export async function call(path, { method = "GET", body, headers = {}, signal, auth = true } = {}) {
  const sent = { ...headers };
  const secret = token.get();
  if (auth && secret) sent.Authorization = `Bearer ${secret}`;
  let payload = body;
  if (body !== undefined && !(body instanceof Blob) && !(body instanceof ArrayBuffer)) {
    sent["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  return fetch(path, {
    method,
    headers: sent,
    body: payload,
    signal,
    credentials: "omit",
    cache: "no-store",
    redirect: "error",
  });
}

export async function api(path, options) {
  const resp = await call(path, options);
  if (!resp.ok) throw await ApiError.of(resp);
  if (resp.status === 204) return null;
  const type = resp.headers.get("content-type") || "";
  return type.includes("json") ? resp.json() : resp.text();
}

// One JSON object a line, as the API's /stream routes send them; ends when the
// response ends or `signal` aborts.
export async function lines(path, onItem, signal) {
  const resp = await call(path, { signal });
  if (!resp.ok) throw await ApiError.of(resp);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 1);
      // Awaited: an item's handler that fails (aborted with its page, say) fails here,
      // where follow() sees it, not as an unhandled rejection.
      if (line) await onItem(JSON.parse(line));
    }
  }
}

// lines(), again after each drop (an API restart, say), until `signal` aborts.
export async function follow(path, onItem, signal, onState = () => {}) {
  let wait = 500;
  while (!signal.aborted) {
    try {
      onState("live");
      await lines(typeof path === "function" ? path() : path, onItem, signal);
      wait = 500;
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && (err.status === 401 || err.status === 403 || err.status === 404))
        throw err;
      onState("reconnecting");
    }
    await new Promise((r) => setTimeout(r, wait));
    wait = Math.min(wait * 2, 8000);
  }
}
