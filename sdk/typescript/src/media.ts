// OctoAI's media convention: a file travels as {"data": "<base64>"}.
import { base64ToBytes, bytesToBase64 } from "./webhooks.js";

export function toMedia(bytes: Uint8Array): { data: string } {
  return { data: bytesToBase64(bytes) };
}

export function fromMedia(media: unknown): Uint8Array {
  const data = media && typeof media === "object" ? (media as { data?: unknown }).data : media;
  if (data && typeof data === "object") {
    throw new Error("this media is a URL ({data: {url}}): fetch it yourself");
  }
  if (typeof data !== "string") throw new Error("not media");
  return base64ToBytes(data);
}
