// A model's output shown as what it is: text as text, images and sounds as <img> and
// <audio> made from bytes decoded here (recognised by their first bytes, not by what
// the model claims), the rest as a tree of values. Nothing is ever parsed as HTML.
import { h } from "./dom.js";

const SIGNATURES = [
  ["image/png", 0, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]],
  ["image/jpeg", 0, [0xff, 0xd8, 0xff]],
  ["image/gif", 0, [0x47, 0x49, 0x46, 0x38]],
  ["image/webp", 8, [0x57, 0x45, 0x42, 0x50]],
  ["audio/wav", 8, [0x57, 0x41, 0x56, 0x45]],
  ["audio/ogg", 0, [0x4f, 0x67, 0x67, 0x53]],
  ["audio/flac", 0, [0x66, 0x4c, 0x61, 0x43]],
  ["audio/mpeg", 0, [0x49, 0x44, 0x33]],
];
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

export function mediaType(bytes) {
  for (const [type, at, sig] of SIGNATURES) {
    if (bytes.length >= at + sig.length && sig.every((b, i) => bytes[at + i] === b)) {
      if ((type === "image/webp" || type === "audio/wav") && bytes[0] !== 0x52) continue; // RIFF
      return type;
    }
  }
  return null;
}

export function decodeBase64(text) {
  if (text.length < 16 || text.length % 4 !== 0 || !BASE64.test(text.slice(0, 4096))) return null;
  try {
    const raw = atob(text);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  } catch {
    return null;
  }
}

export function mediaElement(bytes, type, name = "output") {
  const url = URL.createObjectURL(new Blob([bytes], { type }));
  const extension = type.split("/")[1];
  const size = `${type}, ${(bytes.length / 1024).toFixed(1)} KiB`;
  const shown = type.startsWith("image/")
    ? h("img", { src: url, alt: `${name} (${type})`, class: "media" })
    : h("audio", { src: url, controls: true, class: "media" });
  return h(
    "figure",
    { class: "media-box", dataset: { type } },
    shown,
    h("figcaption", {}, size, " · ", h("a", { href: url, download: `${name}.${extension}` }, "download")),
  );
}

function asMedia(value, name) {
  const text = typeof value === "string" ? value : value && typeof value.data === "string" ? value.data : null;
  if (text == null) return null;
  const bytes = decodeBase64(text);
  const type = bytes && mediaType(bytes);
  return type ? mediaElement(bytes, type, name) : null;
}

export function renderValue(value, name = "output", depth = 0) {
  const media = asMedia(value, name);
  if (media) return media;
  if (value === null || value === undefined) return h("span", { class: "muted" }, "null");
  if (typeof value === "string") return h("div", { class: "text-out" }, value);
  if (typeof value !== "object") return h("code", {}, JSON.stringify(value));
  if (Array.isArray(value)) {
    if (value.length > 12 && value.every((v) => typeof v === "number")) {
      const head = value.slice(0, 6).map((v) => +v.toFixed(4)).join(", ");
      return h("div", { class: "vector" }, `${value.length} numbers: [${head}, …]`);
    }
    if (depth > 6) return h("code", {}, JSON.stringify(value));
    return h(
      "ol",
      { class: "tree", start: 0 },
      value.map((v, i) => h("li", {}, renderValue(v, `${name}-${i}`, depth + 1))),
    );
  }
  if (depth > 6) return h("code", {}, JSON.stringify(value));
  return h(
    "dl",
    { class: "tree" },
    Object.entries(value).map(([k, v]) => [h("dt", {}, k), h("dd", {}, renderValue(v, k, depth + 1))]),
  );
}

// The output and, folded, the exact JSON that came back (long base64 shortened).
export function renderOutput(body) {
  const value = body && typeof body === "object" && "output" in body ? body.output : body;
  const raw = JSON.stringify(body, (k, v) => (typeof v === "string" && v.length > 200 ? `${v.slice(0, 80)}… (${v.length} characters)` : v), 2);
  return h(
    "div",
    { class: "output" },
    renderValue(value),
    h("details", { class: "raw" }, h("summary", {}, "JSON"), h("pre", {}, raw)),
  );
}
