// The playground: an endpoint's routes from its model's schema, a form for the chosen
// one, and a run in sync, async (a job, polled) or streaming (server-sent events) mode.
import { ApiError, api, call } from "./api.js";
import { copy, duration, fill, h } from "./dom.js";
import { FieldError, schemaForm } from "./form.js";
import { renderOutput, renderValue } from "./render.js";

// Routes as [{path, description, schema, root, streams}], from the example catalogue
// (no replica needed) or from a running model's /openapi.json.
async function loadRoutes(endpoint, example, signal, demo) {
  if (example && !demo) {
    try {
      const found = await api(`/v1/examples/${encodeURIComponent(example)}`, { signal });
      if (found.routes && !found.routes.error) {
        return {
          sample: found.sample_input || {},
          defaultRoute: found.route,
          routes: Object.entries(found.routes).map(([path, r]) => ({
            path,
            description: r.description,
            schema: r.input_schema,
            root: r.input_schema,
            streams: r.streams,
          })),
        };
      }
    } catch (err) {
      if (signal.aborted) throw err;
    }
  }
  const doc = await api(`/e/${endpoint}/openapi.json`, { signal, auth: !demo });
  const routes = [];
  for (const [path, ops] of Object.entries(doc.paths || {})) {
    const op = ops.post;
    const schema = op?.requestBody?.content?.["application/json"]?.schema;
    if (!schema) continue;
    routes.push({ path, description: op.description || op.summary || "", schema, root: doc, streams: !!op["x-berth-streams"] });
  }
  return { sample: {}, defaultRoute: "/infer", routes };
}

function sseEvents(onEvent) {
  let buffer = "";
  return (text) => {
    buffer += text.replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(event, data.join("\n"));
    }
  };
}

export async function playground(root, { endpoint, example = null, demo = false, signal }) {
  fill(root, h("p", { class: "muted" }, "Reading the model's schema… (an endpoint at zero replicas starts one first)"));
  let loaded;
  try {
    loaded = await loadRoutes(endpoint, example, signal, demo);
  } catch (err) {
    if (signal.aborted) return;
    const why = err instanceof ApiError && err.status === 401 && demo ? "This endpoint is not public." : `The model's schema could not be read: ${err.message}`;
    fill(root, h("p", { class: "error" }, why));
    return;
  }
  if (!loaded.routes.length) {
    fill(root, h("p", { class: "muted" }, "This model publishes no route with a JSON input."));
    return;
  }
  const routeSelect = h("select", { name: "route" }, loaded.routes.map((r) => h("option", { value: r.path }, r.path)));
  if (loaded.routes.some((r) => r.path === loaded.defaultRoute)) routeSelect.value = loaded.defaultRoute;
  const described = h("p", { class: "hint" });
  const formBox = h("div");
  const modes = h("div", { class: "modes", role: "radiogroup" });
  const runButton = h("button", { type: "submit", class: "primary" }, "Run");
  const status = h("div", { class: "run-status", role: "status" });
  const output = h("div", { class: "run-output", dataset: { testid: "output" } });
  const copies = demo ? null : h("div", { class: "copy-as" });
  let form;
  let lastInput = null;

  const setRoute = () => {
    const route = loaded.routes.find((r) => r.path === routeSelect.value);
    described.textContent = route.description || "";
    const initial = route.path === loaded.defaultRoute ? loaded.sample : {};
    form = schemaForm(route.schema, route.root, initial);
    fill(formBox, form.element);
    const options = [["sync", "Sync"], ["async", "Async job"]];
    if (route.streams) options.push(["stream", "Stream"]);
    fill(
      modes,
      options.map(([value, label], i) =>
        h("label", { class: "mode" }, h("input", { type: "radio", name: "mode", value, checked: route.streams ? value === "stream" : i === 0 }), ` ${label}`),
      ),
    );
  };
  routeSelect.addEventListener("change", setRoute);
  setRoute();

  const target = () => `/e/${endpoint}${routeSelect.value}`;

  async function runSync(input) {
    const began = performance.now();
    const resp = await call(target(), { method: "POST", body: input, signal, auth: !demo });
    const took = (performance.now() - began) / 1000;
    if (!resp.ok) throw await ApiError.of(resp);
    const body = await resp.json();
    const inference = body?.analytics?.inference_time_ms;
    status.textContent = `${resp.status} in ${duration(took)}` + (inference != null ? ` (model: ${duration(inference / 1000)})` : "");
    fill(output, renderOutput(body));
  }

  async function runAsync(input) {
    const resp = await call(target(), { method: "POST", body: input, signal, auth: !demo, headers: { "X-OctoAI-Async": "1" } });
    if (!resp.ok) throw await ApiError.of(resp);
    const job = await resp.json();
    const id = job.response_id;
    const info = h("dl", { class: "job" });
    fill(output, info);
    for (;;) {
      const state = await api(`/v1/requests/${id}`, { signal, auth: !demo });
      const t = state.timings || {};
      fill(
        info,
        h("dt", {}, "job"), h("dd", {}, h("code", {}, id)),
        h("dt", {}, "status"), h("dd", { class: `badge ${state.status}` }, state.status),
        state.queue_position != null ? [h("dt", {}, "queue position"), h("dd", {}, String(state.queue_position))] : null,
        state.estimated_wait_s != null ? [h("dt", {}, "estimated wait"), h("dd", {}, duration(state.estimated_wait_s))] : null,
        state.waiting_for ? [h("dt", {}, "waiting for"), h("dd", {}, String(state.waiting_for.reason || state.waiting_for))] : null,
        Object.entries(t).filter(([, v]) => v != null).map(([k, v]) => [h("dt", {}, k.replace(/_s$/, "").replace(/_/g, " ")), h("dd", {}, duration(v))]),
        state.reason ? [h("dt", {}, "reason"), h("dd", {}, state.reason)] : null,
      );
      status.textContent = `job ${state.status}`;
      if (!["pending", "running"].includes(state.status)) {
        if (state.status === "completed" || state.status === "failed") {
          const answer = await call(`/v1/responses/${id}`, { signal, auth: !demo });
          const body = await answer.json().catch(() => null);
          output.append(answer.ok ? renderOutput(body) : h("p", { class: "error" }, body?.error?.message || `HTTP ${answer.status}`));
        }
        return;
      }
      await new Promise((r) => setTimeout(r, 400));
    }
  }

  async function runStream(input) {
    const began = performance.now();
    const resp = await call(target(), { method: "POST", body: input, signal, auth: !demo, headers: { Accept: "text/event-stream" } });
    if (!resp.ok) throw await ApiError.of(resp);
    const text = h("div", { class: "text-out streamed" });
    const parts = h("ol", { class: "chunks", start: 0 });
    fill(output, text, parts);
    let count = 0;
    let failed = null;
    const feed = sseEvents((event, data) => {
      if (data === "[DONE]") return;
      let value = data;
      try {
        value = JSON.parse(data);
      } catch {
        // plain text chunk
      }
      if (event === "error") {
        failed = value?.message || String(data);
        return;
      }
      count += 1;
      if (typeof value === "string") text.append(value);
      else parts.append(h("li", {}, renderValue(value, `chunk-${count}`)));
      status.textContent = `streaming: ${count} chunk${count === 1 ? "" : "s"} in ${duration((performance.now() - began) / 1000)}`;
    });
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      feed(value);
    }
    status.textContent = `${failed ? "failed" : "done"}: ${count} chunk${count === 1 ? "" : "s"} in ${duration((performance.now() - began) / 1000)}`;
    if (failed) output.append(h("p", { class: "error" }, failed));
  }

  async function run(event) {
    event.preventDefault();
    let input;
    try {
      input = form.read();
    } catch (err) {
      if (err instanceof FieldError) {
        status.textContent = err.message;
        return;
      }
      throw err;
    }
    lastInput = input;
    const mode = modes.querySelector("input:checked")?.value || "sync";
    runButton.disabled = true;
    status.textContent = "running…";
    fill(output);
    try {
      if (mode === "async") await runAsync(input);
      else if (mode === "stream") await runStream(input);
      else await runSync(input);
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError) {
        form.showErrors(err.details);
        status.textContent = `${err.status}: ${err.code}`;
        fill(output, h("p", { class: "error" }, err.message));
      } else {
        status.textContent = "failed";
        fill(output, h("p", { class: "error" }, String(err.message || err)));
      }
    } finally {
      runButton.disabled = false;
    }
  }

  async function copyAs(lang, button) {
    let input = lastInput;
    try {
      input = form.read();
    } catch {
      // the last run's input, or the form's as far as it reads
    }
    const found = await api(`/v1/endpoint/${endpoint}/snippets`, { method: "POST", body: { route: routeSelect.value, input: input || {} }, signal });
    const text = found.snippets[lang];
    snippetBox.textContent = text;
    snippetBox.hidden = false;
    await copy(text, button);
  }
  const snippetBox = h("pre", { class: "snippet", hidden: true });
  if (copies) {
    fill(
      copies,
      h("span", { class: "muted" }, "Copy these inputs as "),
      [["curl", "curl"], ["python", "Python"], ["typescript", "TypeScript"]].map(([lang, label]) => {
        const b = h("button", { type: "button", class: "small", dataset: { lang } }, label);
        b.addEventListener("click", () => copyAs(lang, b).catch((err) => (status.textContent = err.message)));
        return b;
      }),
      snippetBox,
    );
  }

  fill(
    root,
    h(
      "form",
      { class: "playground", onsubmit: (e) => run(e).catch((err) => (status.textContent = String(err))) },
      h("div", { class: "route-row" }, h("label", {}, "Route ", routeSelect), modes),
      described,
      formBox,
      h("div", { class: "actions" }, runButton, status),
      copies,
    ),
    h("section", { class: "result" }, h("h3", {}, "Output"), output),
  );
}
