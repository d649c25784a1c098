// The shapes Berth's API answers with, and the options its calls take.

export type JobStatus = "pending" | "running" | "completed" | "failed" | "cancelled" | "expired";

export interface Replica {
  replica_id: string;
  status: string;
  restarts: number;
  age: number;
}

export interface Endpoint {
  name: string;
  endpoint: string;
  min_replicas: number;
  max_replicas: number;
  concurrency_per_replica: number;
  visibility: "private" | "public";
  instance_type: string;
  replicas: Replica[];
  failing: { reason: string; failures: number } | null;
  queued: number;
  in_flight: number;
  [field: string]: unknown;
}

export interface Job {
  response_id: string;
  status: JobStatus;
  endpoint?: string;
  reason?: string | null;
  response_url?: string | null;
  queue_position?: number | null;
  estimated_wait_s?: number | null;
  timings?: Record<string, unknown>;
  callback?: Record<string, unknown> | null;
  [field: string]: unknown;
}


export interface Event {
  timestamp: string;
  replica_id?: string | null;
  event: { type: string; level?: string; details?: Record<string, unknown> };
}

export interface Asset {
  id: string;
  name: string;
  asset_type: string;
  data: Record<string, unknown>;
  status: string;
  status_details: string;
  description: string;
  size_bytes: number;
  created_at: string;
  is_public: boolean;
  sha256?: string;
  [field: string]: unknown;
}

export interface Tune {
  id: string;
  name: string;
  status: "pending" | "running" | "succeeded" | "failed" | "cancelled";
  status_details: string;
  tune_type: string;
  details: Record<string, unknown>;
  output_lora_ids: string[];
  endpoint?: string;
  metrics?: Record<string, unknown>;
  [field: string]: unknown;
}

export interface AssetOptions {
  assetType?: string;
  data?: Record<string, unknown>;
  description?: string;
  isPublic?: boolean;
}

export interface TuneOptions {
  steps?: number;
  engine?: string;
  checkpointId?: string;
  triggerWords?: string[];
  seed?: number;
  /** A caption per file id (an SDXL tune's pictures). */
  captions?: Record<string, string>;
}

export interface Token {
  id: string;
  name: string;
  scopes: string[];
  endpoints?: string[] | null;
  expires_at?: number | null;
  token?: string;
}
