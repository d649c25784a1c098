// A model folder chosen in the browser, packed as the tar.gz that POST /v1/models takes
// (the folder's own name stripped, as `berth deploy ./folder` packs it).
const SKIP = new Set(["__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache"]);
const enc = new TextEncoder();

function octal(value, width) {
  return value.toString(8).padStart(width - 1, "0") + "\0";
}

function header(name, size) {
  const block = new Uint8Array(512);
  const put = (text, at, width) => block.set(enc.encode(text).subarray(0, width), at);
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

// files: a FileList from <input webkitdirectory>; returns a gzip Blob.
export async function packFolder(files) {
  const parts = [];
  const chosen = [...files]
    .map((f) => ({ file: f, path: (f.webkitRelativePath || f.name).split("/").slice(1).join("/") || f.name }))
    .filter(({ path }) => !path.split("/").some((p) => SKIP.has(p)))
    .sort((a, b) => (a.path < b.path ? -1 : 1));
  if (!chosen.length) throw new Error("the folder is empty");
  for (const { file, path } of chosen) {
    parts.push(header(path, file.size), new Uint8Array(await file.arrayBuffer()));
    const pad = (512 - (file.size % 512)) % 512;
    if (pad) parts.push(new Uint8Array(pad));
  }
  parts.push(new Uint8Array(1024));
  const tar = new Blob(parts);
  return new Response(tar.stream().pipeThrough(new CompressionStream("gzip"))).blob();
}
