// Server-sent events from a fetch body: each event's data, JSON-decoded when it is JSON.

const DONE = "[DONE]"; // the last event of a stream (OpenAI's convention, Berth's too)

function decode(lines: string[]): unknown {
  const data = lines
    .filter((l) => l.startsWith("data:"))
    .map((l) => l.slice(5).replace(/^ /, ""))
    .join("\n");
  try {
    return JSON.parse(data);
  } catch {
    return data;
  }
}

export async function* sseEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<unknown> {
  const decoder = new TextDecoder();
  const reader = body.getReader();
  let buffer = "";
  let lines: string[] = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      let cut: number;
      while ((cut = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, cut).replace(/\r$/, "");
        buffer = buffer.slice(cut + 1);
        if (line) {
          lines.push(line);
          continue;
        }
        const event = lines;
        lines = [];
        if (!event.some((l) => l.startsWith("data:"))) continue; // a comment or keep-alive
        const data = decode(event);
        if (data === DONE) return;
        yield data;
      }
      if (done) break;
    }
    if (buffer) lines.push(buffer);
    if (lines.some((l) => l.startsWith("data:"))) {
      const data = decode(lines);
      if (data !== DONE) yield data;
    }
  } finally {
    await reader.cancel().catch(() => undefined);
  }
}
