// One error tree for every call: the HTTP status, Berth's error code and message, and the
// X-User-Request-ID that finds the request in the API's logs and events.

export interface ErrorFields {
  status: number;
  code?: string | undefined;
  requestId?: string | undefined;
  details?: unknown;
  body?: unknown;
  retryAfter?: number | undefined;
}

export class BerthError extends Error {
  readonly status: number;
  readonly code: string | undefined;
  readonly requestId: string | undefined;
  readonly details: unknown;
  readonly body: unknown;
  readonly retryAfter: number | undefined;

  constructor(message: string, fields: ErrorFields) {
    super(fields.requestId ? `${message} (request id ${fields.requestId})` : message);
    this.name = new.target.name;
    this.status = fields.status;
    this.code = fields.code;
    this.requestId = fields.requestId;
    this.details = fields.details;
    this.body = fields.body;
    this.retryAfter = fields.retryAfter;
  }
}

export class BadRequest extends BerthError {}
export class Unauthorized extends BerthError {}
export class Forbidden extends BerthError {}
export class NotFound extends BerthError {}
export class Conflict extends BerthError {}
export class PayloadTooLarge extends BerthError {}
/** 422: `details` says which input was wrong and why. */
export class Unprocessable extends BerthError {}
/** 429: the endpoint's queue is full; `retryAfter` says when to try again. */
export class RateLimited extends BerthError {}
export class ServerError extends BerthError {}
/** 503: NATS, a replica or the endpoint could not take the request now. */
export class Unavailable extends ServerError {}
/** 504: no answer within the request's timeout or deadline. */
export class Timeout extends ServerError {}
/** The API could not be reached, or the connection broke before an answer. */
export class ConnectionFailed extends BerthError {}
/** A job asked for its result ended without one (failed, cancelled or expired). */
export class JobFailed extends BerthError {
  readonly job: unknown;
  constructor(job: { response_id: string; status: string; reason?: string | null }) {
    super(`job ${job.response_id} ${job.status}${job.reason ? `: ${job.reason}` : ""}`, {
      status: 0,
    });
    this.job = job;
  }
}

const BY_STATUS: Record<number, typeof BerthError> = {
  400: BadRequest,
  401: Unauthorized,
  403: Forbidden,
  404: NotFound,
  409: Conflict,
  413: PayloadTooLarge,
  422: Unprocessable,
  429: RateLimited,
  503: Unavailable,
  504: Timeout,
};

/** The error an answer of 400 or over means (Berth's `{"error": {...}}`, FastAPI's
 * `{"detail": ...}`, or whatever a model answered). */
export function errorFor(
  status: number,
  body: unknown,
  requestId: string | undefined,
  retryAfter: number | undefined,
): BerthError {
  let code: string | undefined;
  let message: string | undefined;
  let details: unknown;
  if (body && typeof body === "object") {
    const b = body as Record<string, unknown>;
    const error = b["error"];
    if (error && typeof error === "object") {
      const e = error as Record<string, unknown>;
      code = typeof e["code"] === "string" ? e["code"] : undefined;
      message = typeof e["message"] === "string" ? e["message"] : undefined;
      details = e["details"];
    } else if ("detail" in b) {
      details = b["detail"];
      message = typeof details === "string" ? details : "invalid request";
    }
  }
  if (message === undefined) {
    message = typeof body === "string" && body ? body.slice(0, 500) : `HTTP ${status}`;
  }
  const Kind = BY_STATUS[status] ?? (status >= 500 ? ServerError : BerthError);
  return new Kind(`${status}: ${message}`, { status, code, requestId, details, body, retryAfter });
}
