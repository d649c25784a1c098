// Node only: a model folder packed as the tar.gz that POST /v1/models takes (what
// `berth deploy ./folder` and the Python SDK send).
import { readdir, readFile } from "node:fs/promises";
import { join, relative, sep } from "node:path";
import { gzipSync } from "node:zlib";

const SKIP = new Set(["__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache", "node_modules"]);
const enc = new TextEncoder();

function octal(value: number, width: number): string {
  return value.toString(8).padStart(width - 1, "0") + "\0";
}

function header(name: string, size: number): Uint8Array {
  const block = new Uint8Array(512);
  const put = (text: string, at: number, width: number) => block.set(enc.encode(text).subarray(0, width), at);
  let prefix = "";
  let base = name;
  if (enc.encode(name).length > 100) {
    const cut = name.lastIndexOf("/", 154);
    if (cut < 0 || enc.encode(name.slice(cut + 1)).length > 100) throw new Error(`path too long for tar: ${name}`);
    prefix = name.slice(0, cut);
    base = name.slice(cut + 1);
  }
  put(base, 0, 100);
  put(octal(0o644, 8), 100, 8);
  put(octal(0, 8), 108, 8);
  put(octal(0, 8), 116, 8);
  put(octal(size, 12), 124, 12);
  put(octal(0, 12), 136, 12);
  put("        ", 148, 8);
  put("0", 156, 1);
  put("ustar\0", 257, 6);
  put("00", 263, 2);
  put(prefix, 345, 155);
  let sum = 0;
  for (const b of block) sum += b;
  put(octal(sum, 7) + " ", 148, 8);
  return block;
}

async function files(root: string, dir = root): Promise<string[]> {
  const found: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    if (SKIP.has(entry.name)) continue;
    const path = join(dir, entry.name);
    if (entry.isDirectory()) found.push(...(await files(root, path)));
    else if (entry.isFile()) found.push(relative(root, path).split(sep).join("/"));
  }
  return found;
}

/** The folder as a reproducible tar.gz (sorted, times and owners zeroed). */
export async function packDir(folder: string): Promise<Uint8Array> {
  const names = (await files(folder)).sort();
  if (!names.length) throw new Error(`${folder} holds no files`);
  const parts: Uint8Array[] = [];
  for (const name of names) {
    const data = await readFile(join(folder, name));
    parts.push(header(name, data.length), data);
    const pad = (512 - (data.length % 512)) % 512;
    if (pad) parts.push(new Uint8Array(pad));
  }
  parts.push(new Uint8Array(1024));
  return gzipSync(Buffer.concat(parts));
}
