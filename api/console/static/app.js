// The Berth console: a page per path under /console/, drawn from the API's JSON.
import { ApiError, api, follow, token } from "./api.js";
import { lineChart } from "./chart.js";
import { ago, clock, copy, duration, fill, h } from "./dom.js";
import { playground } from "./playground.js";
import { packFolder } from "./tar.js";

const app = document.getElementById("app");
const mode = document.body.dataset.mode;
let current = null; // the page's AbortController: leaving a page ends its streams

const NAV = [
  ["/console/", "Endpoints"],
  ["/console/new", "New endpoint"],
  ["/console/jobs", "Jobs"],
  ["/console/assets", "Assets"],
  ["/console/tunes", "Fine-tuning"],
  ["/console/tokens", "Tokens"],
  ["/console/secrets", "Secrets"],
  ["/console/credentials", "Registry credentials"],
];

const PAGES = [
  [/^\/console\/?$/, endpointsPage],
  [/^\/console\/signin$/, signinPage],
  [/^\/console\/new$/, (main, signal) => endpointForm(main, signal, null)],
  [/^\/console\/endpoints\/([a-z0-9-]+)$/, (main, signal, m) => endpointPage(main, signal, m[1])],
  [/^\/console\/endpoints\/([a-z0-9-]+)\/edit$/, (main, signal, m) => endpointForm(main, signal, m[1])],
  [/^\/console\/jobs$/, jobsPage],
  [/^\/console\/assets$/, assetsPage],
  [/^\/console\/tunes$/, tunesPage],
  [/^\/console\/tokens$/, tokensPage],
  [/^\/console\/secrets$/, secretsPage],
  [/^\/console\/credentials$/, credentialsPage],
];

export function go(path, replace = false) {
  if (replace) history.replaceState({}, "", path);
  else history.pushState({}, "", path);
  render();
}

function link(path, ...children) {
  return h("a", { href: path, onclick: (e) => { if (e.button === 0 && !e.metaKey && !e.ctrlKey) { e.preventDefault(); go(path); } } }, ...children);
}

function badge(state) {
  return h("span", { class: `badge ${state}`, dataset: { state } }, state);
}

function errorBox(err) {
  return h("p", { class: "error", role: "alert" }, err instanceof ApiError ? `${err.message} (${err.status})` : String(err.message || err));
}

function render() {
  current?.abort();
  current = new AbortController();
  const signal = current.signal;
  const path = location.pathname;
  if (!token.get() && path !== "/console/signin") {
    sessionStorage.setItem("berth.next", path);
    history.replaceState({}, "", "/console/signin");
    return render();
  }
  const found = PAGES.map(([re, page]) => [re.exec(path), page]).find(([m]) => m);
  const main = h("main", { id: "main" });
  const signedIn = path !== "/console/signin";
  fill(
    app,
    h(
      "header",
      { class: "top" },
      h("span", { class: "brand" }, link("/console/", "Berth")),
      signedIn
        ? h("nav", {}, NAV.map(([p, label]) => {
            const a = link(p, label);
            if (p === path || (p !== "/console/" && path.startsWith(p))) a.setAttribute("aria-current", "page");
            return a;
          }), h("a", { href: "/docs", target: "_blank", rel: "noopener" }, "API docs"))
        : null,
      signedIn ? h("button", { class: "small signout", onclick: () => { token.clear(); go("/console/signin"); } }, "Sign out") : null,
    ),
    main,
  );
  if (!found) {
    fill(main, h("h1", {}, "Not found"), h("p", {}, link("/console/", "Back to the endpoints")));
    return;
  }
  const [match, page] = found;
  Promise.resolve(page(main, signal, match)).catch((err) => {
    if (signal.aborted) return;
    if (err instanceof ApiError && err.status === 401) {
      token.clear();
      sessionStorage.setItem("berth.flash", "Your token was refused: sign in again.");
      go("/console/signin", true);
      return;
    }
    main.append(errorBox(err));
  });
}

// -- sign in -----------------------------------------------------------------------------

async function signinPage(main) {
  const input = h("input", { type: "password", name: "token", autocomplete: "off", required: true, placeholder: "berth_…" });
  const message = h("p", { class: "error", role: "alert" }, sessionStorage.getItem("berth.flash") || "");
  sessionStorage.removeItem("berth.flash");
  const submit = async (e) => {
    e.preventDefault();
    token.set(input.value.trim());
    try {
      await api("/v1/endpoints");
    } catch (err) {
      token.clear();
      message.textContent =
        err instanceof ApiError && err.status === 401 ? "That token was refused."
        : err instanceof ApiError && err.status === 403 ? "This token may not use the console: it needs the admin scope."
        : `Could not sign in: ${err.message}`;
      return;
    }
    const next = sessionStorage.getItem("berth.next");
    sessionStorage.removeItem("berth.next");
    go(next && next.startsWith("/console/") && next !== "/console/signin" ? next : "/console/", true);
  };
  fill(
    main,
    h(
      "form",
      { class: "card signin", onsubmit: submit },
      h("h1", {}, "Sign in"),
      h("label", { class: "field" }, h("span", { class: "label" }, "API token"), input,
        h("small", { class: "hint" }, "An admin token (`berth tokens create --scope admin`). It stays in this tab only.")),
      h("button", { type: "submit", class: "primary" }, "Sign in"),
      message,
    ),
  );
  input.focus();
}

// -- endpoints ---------------------------------------------------------------------------

function replicaCell(r) {
  return h("span", { class: "replicas" },
    h("span", { title: "starting" }, `${r.starting} starting`), " · ",
    h("span", { title: "ready" }, `${r.ready} ready`), " · ",
    h("span", { title: "busy" }, `${r.busy} busy`),
    r.failed ? [" · ", h("span", { class: "error" }, `${r.failed} failed`)] : null);
}

async function endpointsPage(main, signal) {
  const live = h("span", { class: "live" }, "connecting…");
  const body = h("tbody");
  const table = h("table", { class: "list", id: "endpoints" },
    h("thead", {}, h("tr", {}, ["Endpoint", "State", "Replicas", "Queued", "In flight", "Scaling", "Visibility", "Instance"].map((t) => h("th", {}, t)))),
    body);
  const empty = h("p", { class: "muted", hidden: true }, "No endpoints yet. ", link("/console/new", "Deploy an example"), " to start.");
  fill(main, h("div", { class: "title-row" }, h("h1", {}, "Endpoints"), live, link("/console/new", h("span", { class: "button primary" }, "New endpoint"))), table, empty);
  await follow("/v1/endpoints/stream", ({ endpoints }) => {
    empty.hidden = endpoints.length > 0;
    table.hidden = endpoints.length === 0;
    fill(body, endpoints.map((e) => h("tr", { dataset: { endpoint: e.name } },
      h("td", {}, link(`/console/endpoints/${e.name}`, e.name)),
      h("td", {}, badge(e.state), e.reason ? h("small", { class: "hint" }, " ", e.reason) : null),
      h("td", {}, replicaCell(e.replicas)),
      h("td", { class: "num", dataset: { col: "queued" } }, e.queued ?? "—"),
      h("td", { class: "num", dataset: { col: "in_flight" } }, e.in_flight ?? "—"),
      h("td", {}, `${e.min_replicas}–${e.max_replicas}`),
      h("td", {}, e.public ? "public" : "private"),
      h("td", {}, e.instance_type))));
    live.textContent = `live · ${clock(Date.now() / 1000)}`;
    if (!performance.getEntriesByName("endpoints-shown").length) performance.mark("endpoints-shown");
  }, signal, (state) => (live.textContent = state === "live" ? "live" : "reconnecting…"));
}

function settingsTable(ep) {
  const rows = [
    ["URL", h("code", {}, ep.endpoint)],
    ["Description", ep.description || "—"],
    ["Model", ep.example ? `example: ${ep.example}` : ep.image_url ? `image: ${ep.image_url}` : ep.model_id || "—"],
    ["Instance type", ep.instance_type],
    ["Replicas", `${ep.min_replicas} to ${ep.max_replicas}, ${ep.concurrency_per_replica} request(s) at a time each`],
    ["Scale to zero after", `${ep.scale_to_zero} s without requests`],
    ["Request timeout", `${ep.request_timeout} s`],
    ["Visibility", ep.visibility],
    ["Secrets", ep.container_secrets.length ? ep.container_secrets.join(", ") : "—"],
    ["Registry credential", ep.registry_credential || "—"],
  ];
  return h("table", { class: "kv" }, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v))));
}

function age(seconds) {
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

function replicasTable(ep) {
  if (!ep.replicas.length) return h("p", { class: "muted", id: "replicas" }, "No replicas run now.");
  return h("table", { class: "list", id: "replicas" },
    h("thead", {}, h("tr", {}, ["Replica", "Status", "Age", "Restarts"].map((t) => h("th", {}, t)))),
    h("tbody", {}, ep.replicas.map((r) => h("tr", {},
      h("td", {}, h("code", {}, r.replica_id)), h("td", {}, badge(r.status)),
      h("td", {}, r.age >= 0 ? age(r.age) : "—"), h("td", { class: "num" }, String(r.restarts))))));
}

function charts(data) {
  const p = data.points;
  return h("div", { class: "charts" },
    lineChart("Requests", p, [{ label: "ok", value: (x) => x.requests - x.errors, class: "s1" }, { label: "errors", value: (x) => x.errors, class: "s2" }], ` / ${data.interval_s} s`),
    lineChart("Latency", p, [{ label: "p50", value: (x) => x.p50_ms, class: "s1" }, { label: "p95", value: (x) => x.p95_ms, class: "s2" }], " ms"),
    lineChart("Queue", p, [{ label: "queued", value: (x) => x.queued, class: "s1" }, { label: "in flight", value: (x) => x.in_flight, class: "s2" }]),
    lineChart("Replicas", p, [{ label: "ready", value: (x) => x.replicas.ready + x.replicas.busy, class: "s1" }, { label: "busy", value: (x) => x.replicas.busy, class: "s2" }, { label: "starting", value: (x) => x.replicas.starting, class: "s3" }]));
}

function feed(title, id) {
  const list = h("ol", { class: "feed", id, "aria-live": "polite" });
  const state = h("span", { class: "live" }, "");
  return { list, state, element: h("section", { class: "feed-box" }, h("h3", {}, title, " ", state), list) };
}

function push(list, ...cells) {
  list.append(h("li", {}, ...cells));
  while (list.children.length > 500) list.firstElementChild.remove();
  list.scrollTop = list.scrollHeight;
}

async function endpointPage(main, signal, name) {
  let ep = await api(`/v1/endpoint/${name}`, { signal });
  const stateBadge = h("span", {}, badge(ep.failing ? "failing" : ep.endpoint_state));
  const overview = h("div", { class: "tab", dataset: { tab: "overview" } });
  const playBox = h("div", { class: "tab", dataset: { tab: "playground" }, hidden: true });
  const logsBox = h("div", { class: "tab", dataset: { tab: "logs" }, hidden: true });
  const codeBox = h("div", { class: "tab", dataset: { tab: "code" }, hidden: true });
  const tabs = { overview, playground: playBox, logs: logsBox, code: codeBox };
  const started = new Set();
  const show = (which) => {
    for (const [k, el] of Object.entries(tabs)) el.hidden = k !== which;
    for (const b of tabBar.querySelectorAll("button")) b.setAttribute("aria-selected", String(b.dataset.tab === which));
    if (started.has(which)) return;
    started.add(which);
    if (which === "playground") playground(playBox, { endpoint: name, example: ep.example, signal });
    if (which === "logs") startFeeds();
    if (which === "code") loadSnippets();
  };
  const tabBar = h("div", { class: "tabs", role: "tablist" }, [["overview", "Overview"], ["playground", "Playground"], ["logs", "Events & logs"], ["code", "Code"]].map(([k, label]) =>
    h("button", { type: "button", role: "tab", dataset: { tab: k }, onclick: () => show(k) }, label)));
  const remove = async () => {
    if (!confirm(`Delete endpoint ${name}? Its replicas stop and its queue is dropped.`)) return;
    await api(`/v1/endpoint/${name}`, { method: "DELETE" });
    go("/console/");
  };
  const urlButton = h("button", { type: "button", class: "small" }, "Copy URL");
  urlButton.addEventListener("click", () => copy(ep.endpoint, urlButton));
  fill(main,
    h("div", { class: "title-row" }, h("h1", {}, name), stateBadge,
      h("span", { class: "spacer" }),
      ep.visibility === "public" ? h("a", { href: `/demo/${name}`, target: "_blank", rel: "noopener", class: "button" }, "Public demo page") : null,
      link(`/console/endpoints/${name}/edit`, h("span", { class: "button" }, "Edit")),
      h("button", { type: "button", class: "danger", onclick: () => remove().catch((e) => main.append(errorBox(e))) }, "Delete")),
    h("p", { class: "url-row" }, h("code", { class: "url" }, ep.endpoint), " ", urlButton),
    tabBar, overview, playBox, logsBox, codeBox);

  const replicasBox = h("div");
  const chartBox = h("div");
  fill(overview, h("div", { class: "columns" },
    h("section", {}, h("h3", {}, "Settings"), settingsTable(ep)),
    h("section", {}, h("h3", {}, "Replicas"), replicasBox)),
    h("section", {}, h("h3", {}, "Last hour"), chartBox));
  fill(replicasBox, replicasTable(ep));

  async function refreshCharts() {
    while (!signal.aborted) {
      try {
        const data = await api(`/v1/endpoint/${name}/metrics`, { signal });
        fill(chartBox, charts(data));
        await new Promise((r) => setTimeout(r, Math.max(1000, data.interval_s * 1000)));
      } catch (err) {
        if (signal.aborted) return;
        fill(chartBox, errorBox(err));
        await new Promise((r) => setTimeout(r, 5000));
      }
    }
  }
  refreshCharts();

  function startFeeds() {
    const events = feed("Events", "events");
    const logs = feed("Logs", "logs");
    fill(logsBox, h("div", { class: "columns" }, events.element, logs.element));
    const hourAgo = new Date(Date.now() - 3600_000).toISOString();
    follow(`/v1/events/${name}/stream?begin_time=${encodeURIComponent(hourAgo)}`, (e) => {
      const ev = e.event || {};
      const details = ev.details && Object.keys(ev.details).length ? JSON.stringify(ev.details) : "";
      push(events.list, h("time", {}, clock(Date.parse(e.timestamp) / 1000)), " ", h("b", { class: ev.level === "warning" ? "warn" : "" }, ev.type || "event"), e.replica_id ? h("code", {}, ` ${e.replica_id}`) : null, details ? h("span", { class: "muted" }, ` ${details}`) : null);
    }, signal, (s) => (events.state.textContent = s)).catch((err) => events.list.append(errorBox(err)));
    follow(`/v1/logs/${name}/stream?begin_time=${encodeURIComponent(new Date(Date.now() - 900_000).toISOString())}`, (l) => {
      push(logs.list, h("time", {}, clock(Date.parse(l.timestamp) / 1000)), l.replica_id ? h("code", {}, ` ${l.replica_id.slice(-6)} `) : " ", h("span", { class: l.stream === "stderr" ? "stderr" : "" }, l.data ?? l.line ?? JSON.stringify(l)));
    }, signal, (s) => (logs.state.textContent = s)).catch((err) => logs.list.append(errorBox(err)));
  }

  async function loadSnippets() {
    fill(codeBox, h("p", { class: "muted" }, "Loading…"));
    try {
      const found = await api(`/v1/endpoint/${name}/snippets`, { signal });
      fill(codeBox,
        h("p", { class: "hint" }, found.input_from === "none" ? "Fill in the input: the model's schema is read once a replica runs." : `Input from the ${found.input_from}.`),
        Object.entries(found.snippets).map(([lang, text]) => {
          const b = h("button", { type: "button", class: "small" }, "Copy");
          b.addEventListener("click", () => copy(text, b));
          return h("section", { class: "snippet-box", dataset: { lang } }, h("h3", {}, lang.replace("_", " "), " ", b), h("pre", { class: "snippet" }, text));
        }));
    } catch (err) {
      fill(codeBox, errorBox(err));
    }
  }

  show(location.hash === "#playground" ? "playground" : "overview");
  let lastLine = "";
  await follow("/v1/endpoints/stream", async ({ endpoints }) => {
    const mine = endpoints.find((e) => e.name === name);
    if (!mine) return;
    fill(stateBadge, badge(mine.state));
    const line = JSON.stringify(mine);
    if (line === lastLine) return;
    lastLine = line;
    ep = await api(`/v1/endpoint/${name}`, { signal });
    fill(replicasBox, replicasTable(ep));
  }, signal);
}

// -- create / edit -----------------------------------------------------------------------

function row(label, control, hint, fieldName) {
  return h("label", { class: "field", dataset: { field: fieldName || control.name } },
    h("span", { class: "label" }, label), control,
    hint ? h("small", { class: "hint" }, hint) : null,
    h("div", { class: "field-error", role: "alert" }));
}

async function endpointForm(main, signal, name) {
  const editing = name != null;
  const [current, examples, types, secrets, credentials] = await Promise.all([
    editing ? api(`/v1/endpoint/${name}`, { signal }) : null,
    editing ? [] : api("/v1/examples", { signal }),
    api("/v1/instance-types", { signal }).catch(() => []),
    api("/v1/secrets", { signal }).catch(() => []),
    api("/v1/registry-credentials", { signal }).catch(() => []),
  ]);
  const v = current || {};
  const input = (attrs) => h("input", attrs);
  const f = {
    name: input({ name: "name", type: "text", required: true, pattern: "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", value: v.name || "", disabled: editing }),
    example: h("select", { name: "example" }, examples.map((e) => h("option", { value: e.name }, `${e.name} — ${e.description}`))),
    folder: input({ name: "folder", type: "file", webkitdirectory: true, multiple: true }),
    archive: input({ name: "archive", type: "file", accept: ".tar.gz,.tgz,application/gzip" }),
    image_url: input({ name: "image_url", type: "text", value: v.image_url || "", placeholder: "registry.example.com/team/model:1.0" }),
    port: input({ name: "port", type: "number", min: 1, max: 65535, value: v.port ?? 8080 }),
    health_check_path: input({ name: "health_check_path", type: "text", value: v.health_check_path || "/healthcheck" }),
    registry_credential: h("select", { name: "registry_credential" }, h("option", { value: "" }, "none"), credentials.map((c) => h("option", { value: c.key }, c.key))),
    min_replicas: input({ name: "min_replicas", type: "number", min: 0, max: 999, value: v.min_replicas ?? 0 }),
    max_replicas: input({ name: "max_replicas", type: "number", min: 0, max: 999, value: v.max_replicas ?? 1 }),
    scale_to_zero: input({ name: "scale_to_zero", type: "number", min: 0, max: 3600, value: v.scale_to_zero ?? 300 }),
    concurrency_per_replica: input({ name: "concurrency_per_replica", type: "number", min: 1, max: 500, value: v.concurrency_per_replica ?? 1 }),
    request_timeout: input({ name: "request_timeout", type: "number", min: 1, step: "any", value: v.request_timeout ?? 300 }),
    visibility: h("select", { name: "visibility" }, h("option", { value: "private" }, "private (a token is needed)"), h("option", { value: "public" }, "public (anyone with the URL)")),
    instance_type: h("select", { name: "instance_type" }, (types.length ? types.map((t) => t.instance_name) : ["cpu"]).map((t) => h("option", { value: t }, t))),
    description: h("textarea", { name: "description", rows: 2, maxlength: 2000 }),
  };
  f.registry_credential.value = v.registry_credential || "";
  f.visibility.value = v.visibility || "private";
  if (v.instance_type) {
    if (![...f.instance_type.options].some((o) => o.value === v.instance_type)) f.instance_type.append(h("option", { value: v.instance_type }, v.instance_type));
    f.instance_type.value = v.instance_type;
  }
  f.description.value = v.description || "";
  const secretBoxes = secrets.map((key) => h("label", { class: "check" }, h("input", { type: "checkbox", name: "container_secrets", value: key, checked: (v.container_secrets || []).includes(key) }), ` ${key}`));
  const initial = {};
  const numeric = new Set(["port", "min_replicas", "max_replicas", "scale_to_zero", "concurrency_per_replica", "request_timeout"]);
  const valueOf = (k) => {
    const el = f[k];
    if (numeric.has(k)) return el.value === "" ? null : Number(el.value);
    return el.value === "" ? null : el.value;
  };
  for (const k of Object.keys(f)) initial[k] = valueOf(k);
  const chosenSecrets = () => secretBoxes.map((l) => l.firstChild).filter((c) => c.checked).map((c) => c.value);
  const initialSecrets = JSON.stringify(chosenSecrets());

  const source = editing ? null : h("div", { class: "modes", role: "radiogroup" },
    [["example", "An example"], ["folder", "A Python model folder"], ["image", "A container image"]].map(([value, label], i) =>
      h("label", { class: "mode" }, h("input", { type: "radio", name: "source", value, checked: i === 0, onchange: () => showSource() }), ` ${label}`)));
  const sourceBoxes = {
    example: h("div", {}, row("Example", f.example, "Its model, with its scaling unless you set yours below.")),
    folder: h("div", {}, row("Model folder", f.folder, "A folder with service.py (and requirements.txt if it needs packages).", "model_id"), row("…or an archive", f.archive, "A .tar.gz of such a folder.")),
    image: h("div", {}, row("Image", f.image_url), h("div", { class: "columns" }, row("Port", f.port), row("Health check path", f.health_check_path)), row("Registry credential", f.registry_credential, "For a private registry.")),
  };
  const showSource = () => {
    const which = source?.querySelector("input:checked")?.value;
    for (const [k, el] of Object.entries(sourceBoxes)) el.hidden = k !== which;
  };
  const general = h("div", { class: "error", role: "alert" });
  const submitButton = h("button", { type: "submit", class: "primary" }, editing ? "Save" : "Create endpoint");
  const form = h("form", { class: "card endpoint-form", novalidate: true },
    h("h1", {}, editing ? `Edit ${name}` : "New endpoint"),
    editing ? null : row("Name", f.name, "Lowercase letters, digits and '-'; it becomes the URL: /e/<name>."),
    editing ? (v.image_url ? sourceBoxes.image : null) : [h("h3", {}, "Model"), source, Object.values(sourceBoxes)],
    h("h3", {}, "Scaling"),
    h("div", { class: "columns" }, row("Min replicas", f.min_replicas, "0: scale to zero"), row("Max replicas", f.max_replicas)),
    h("div", { class: "columns" }, row("Scale to zero after (s)", f.scale_to_zero), row("Requests at a time per replica", f.concurrency_per_replica)),
    h("div", { class: "columns" }, row("Instance type", f.instance_type), row("Request timeout (s)", f.request_timeout)),
    h("h3", {}, "Access"),
    row("Visibility", f.visibility),
    h("div", { class: "field", dataset: { field: "container_secrets" } }, h("span", { class: "label" }, "Secrets as environment variables"),
      secretBoxes.length ? h("div", { class: "checks" }, secretBoxes) : h("small", { class: "hint" }, "No secrets yet: ", link("/console/secrets", "add one")),
      h("div", { class: "field-error", role: "alert" })),
    row("Description", f.description),
    h("div", { class: "actions" }, submitButton, general));
  if (!editing) showSource();

  const showErrors = (err) => {
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
    const fields = err instanceof ApiError ? err.fields() : {};
    let placed = false;
    for (const [k, msg] of Object.entries(fields)) {
      const box = form.querySelector(`[data-field="${CSS.escape(k)}"] .field-error`);
      if (box) { box.textContent = msg; placed = true; }
    }
    general.textContent = placed ? "Fix the fields marked above." : err.message;
  };

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    submitButton.disabled = true;
    general.textContent = "";
    try {
      const body = {};
      for (const k of ["min_replicas", "max_replicas", "scale_to_zero", "concurrency_per_replica", "request_timeout", "visibility", "instance_type", "description"]) {
        if (valueOf(k) !== initial[k]) body[k] = valueOf(k);
      }
      if (JSON.stringify(chosenSecrets()) !== initialSecrets) body.container_secrets = chosenSecrets();
      if (editing) {
        if (v.image_url) for (const k of ["image_url", "port", "health_check_path", "registry_credential"]) if (valueOf(k) !== initial[k]) body[k] = valueOf(k);
        if (!Object.keys(body).length) { general.textContent = "Nothing changed."; return; }
        await api(`/v1/endpoint/${name}`, { method: "PATCH", body });
        go(`/console/endpoints/${name}`);
        return;
      }
      body.name = f.name.value.trim();
      const which = source.querySelector("input:checked").value;
      if (which === "example") body.example = f.example.value;
      else if (which === "image") {
        body.image_url = f.image_url.value.trim();
        for (const k of ["port", "health_check_path"]) if (valueOf(k) !== initial[k]) body[k] = valueOf(k);
        if (f.registry_credential.value) body.registry_credential = f.registry_credential.value;
      } else {
        let archive;
        if (f.folder.files.length) archive = await packFolder(f.folder.files);
        else if (f.archive.files.length) archive = f.archive.files[0];
        else { showErrors(new ApiError(422, { message: "model_id: choose a model folder or an archive" })); return; }
        general.textContent = "Uploading the model…";
        try {
          body.model_id = (await api("/v1/models", { method: "POST", body: archive, headers: { "Content-Type": "application/gzip" } })).model_id;
        } catch (err) {
          if (err instanceof ApiError) err.message = `model_id: ${err.message}`;
          throw err;
        }
      }
      const made = await api("/v1/endpoint", { method: "POST", body });
      go(`/console/endpoints/${made.name}`);
    } catch (err) {
      if (signal.aborted) return;
      showErrors(err);
    } finally {
      submitButton.disabled = false;
    }
  });
  fill(main, form);
}

// -- jobs --------------------------------------------------------------------------------

async function jobsPage(main, signal) {
  const endpoints = await api("/v1/endpoints", { signal });
  const filter = h("select", { name: "endpoint" }, h("option", { value: "" }, "all endpoints"), endpoints.map((e) => h("option", { value: e.name }, e.name)));
  const body = h("tbody");
  const detail = h("div", { class: "job-detail" });
  let selected = null;
  const table = h("table", { class: "list", id: "jobs" },
    h("thead", {}, h("tr", {}, ["Job", "Endpoint", "Status", "Submitted", "Queued", "Ran", "Callback"].map((t) => h("th", {}, t)))), body);
  fill(main, h("div", { class: "title-row" }, h("h1", {}, "Jobs"), filter), h("p", { class: "hint" }, "Async requests (X-OctoAI-Async), newest first; they are kept for the result TTL."), table, detail);

  let said = ""; // what the last action said, kept across refreshes of the job
  const showDetail = (job) => {
    if (selected !== job.response_id) said = "";
    selected = job.response_id;
    const actions = h("div", { class: "actions" });
    const note = h("span", { class: "hint" }, said);
    const say = (text) => { said = text; note.textContent = text; };
    if (["pending", "running"].includes(job.status))
      actions.append(h("button", { type: "button", class: "danger", onclick: async () => { try { await api(`/v1/requests/${job.response_id}`, { method: "DELETE" }); say("cancelled"); refresh(); } catch (e) { say(e.message); } } }, "Cancel"));
    if (job.callback && !["pending", "running"].includes(job.status))
      actions.append(h("button", { type: "button", onclick: async () => { try { await api(`/v1/requests/${job.response_id}/callback`, { method: "POST" }); say("callback sent again"); refresh(); } catch (e) { say(e.message); } } }, "Send the callback again"));
    const out = h("div");
    if (["completed", "failed"].includes(job.status))
      actions.append(h("button", { type: "button", onclick: async () => { const resp = await api(`/v1/responses/${job.response_id}`).catch((e) => ({ error: e.message })); const { renderOutput } = await import("./render.js"); fill(out, renderOutput(resp)); } }, "Show the response"));
    actions.append(note);
    const cb = job.callback;
    fill(detail, h("section", { class: "card" },
      h("h3", {}, "Job ", h("code", {}, job.response_id)),
      job.reason ? h("p", {}, "Reason: ", job.reason) : null,
      h("p", {}, Object.entries(job.timings || {}).filter(([, x]) => x != null).map(([k, x]) => `${k.replace(/_s$/, "").replace(/_/g, " ")} ${duration(x)}`).join(" · ")),
      cb ? [h("h4", {}, "Callback to ", h("code", {}, cb.url), " ", badge(cb.state), ` ${cb.attempts} attempt(s)`),
        h("table", { class: "list callback-log" }, h("thead", {}, h("tr", {}, ["At", "Status", "Error", "Took"].map((t) => h("th", {}, t)))),
          h("tbody", {}, (cb.log || []).map((a) => h("tr", {}, h("td", {}, clock(a.at)), h("td", {}, a.status ?? "—"), h("td", {}, a.error || ""), h("td", {}, `${Math.round(a.duration_ms)} ms`)))))] : h("p", { class: "muted" }, "No callback."),
      actions, out));
  };

  let jobs = [];
  async function refresh() {
    const q = filter.value ? `?endpoint=${encodeURIComponent(filter.value)}&limit=100` : "?limit=100";
    jobs = await api(`/v1/requests${q}`, { signal });
    fill(body, jobs.length ? jobs.map((j) => h("tr", { dataset: { job: j.response_id }, class: j.response_id === selected ? "selected" : "", onclick: () => showDetail(j) },
      h("td", {}, h("code", {}, j.response_id.slice(0, 8))), h("td", {}, j.endpoint), h("td", {}, badge(j.status)),
      h("td", {}, ago(j.created_at)), h("td", {}, duration(j.timings?.queued_s)), h("td", {}, duration(j.timings?.running_s)),
      h("td", {}, j.callback ? badge(j.callback.state) : "—"))) : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No jobs yet.")));
    const chosen = jobs.find((j) => j.response_id === selected);
    if (chosen && !detail.querySelector(".output")) showDetail(chosen); // a shown response stays
  }
  filter.addEventListener("change", () => refresh());
  while (!signal.aborted) {
    await refresh();
    await new Promise((r) => setTimeout(r, 2000));
  }
}

// -- assets and fine-tuning ---------------------------------------------------------------

function bytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

// PUT a file to an asset's presigned URL (this origin's path: the API may name itself
// otherwise), with the upload's progress; XMLHttpRequest, as fetch reports none.
function putFile(url, file, onProgress) {
  const target = new URL(url, location.origin);
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", target.pathname + target.search);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded, e.total);
    xhr.onload = () => {
      if (xhr.status < 300) return resolve();
      let message = `upload refused (${xhr.status})`;
      try { message = JSON.parse(xhr.responseText).error.message; } catch { /* not JSON */ }
      reject(new Error(message));
    };
    xhr.onerror = () => reject(new Error("the upload was cut off"));
    xhr.send(file);
  });
}

async function assetsPage(main, signal) {
  const body = h("tbody");
  const problem = h("div", { class: "error", role: "alert" });
  const refresh = async () => {
    const { data } = await api("/v1/assets?limit=100", { signal });
    fill(body, data.length ? data.map((a) => h("tr", { dataset: { asset: a.name } },
      h("td", {}, a.name), h("td", {}, a.asset_type), h("td", {}, badge(a.status)),
      h("td", {}, bytes(a.size_bytes)), h("td", {}, ago(Date.parse(a.created_at) / 1000)),
      h("td", {}, h("code", {}, a.id)),
      h("td", {}, h("button", { type: "button", class: "small danger", onclick: async () => {
        if (!confirm(`Delete asset ${a.name}?`)) return;
        try { await api(`/v1/assets/${a.id}`, { method: "DELETE" }); problem.textContent = ""; refresh(); } catch (e) { problem.textContent = e.message; }
      } }, "Delete")))) : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No assets yet.")));
  };
  const fileIn = h("input", { type: "file", name: "file", required: true });
  const nameIn = h("input", { type: "text", name: "name", placeholder: "the file's name" });
  const typeIn = h("select", { name: "asset_type" }, ["file", "checkpoint", "lora", "textual_inversion", "vae", "latent"].map((t) => h("option", { value: t }, t)));
  const formatIn = h("input", { type: "text", name: "file_format", placeholder: "e.g. jsonl, safetensors, png" });
  const progress = h("progress", { max: 1, value: 0, hidden: true });
  const general = h("div", { class: "error", role: "alert" });
  const form = h("form", { class: "card", onsubmit: async (e) => {
    e.preventDefault();
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
    general.textContent = "";
    const file = fileIn.files[0];
    if (!file) return;
    const data = formatIn.value.trim() ? { file_format: formatIn.value.trim() } : {};
    const payload = { name: nameIn.value.trim() || file.name.replace(/[^A-Za-z0-9_.-]/g, "-"), asset_type: typeIn.value, data: { ...data, asset_type: typeIn.value }, size_bytes: file.size };
    try {
      const made = await api("/v1/assets", { method: "POST", body: payload });
      progress.hidden = false;
      await putFile(made.transfer_api.put_url, file, (done, total) => { progress.max = total; progress.value = done; });
      const done = await api(`/v1/assets/${made.asset.id}/complete-upload`, { method: "POST", body: {} });
      if (done.error) throw new Error(done.error);
      form.reset();
      progress.hidden = true;
      refresh();
    } catch (err) {
      progress.hidden = true;
      const fields = err instanceof ApiError ? err.fields() : {};
      for (const [k, msg] of Object.entries(fields)) { const box = form.querySelector(`[data-field="${CSS.escape(k)}"] .field-error`); if (box) box.textContent = msg; }
      general.textContent = err.message;
      refresh();
    }
  } },
    h("h3", {}, "Upload"), row("File", fileIn), row("Name", nameIn, "Letters, digits, '_', '.' and '-'; the file's name if empty."),
    row("Type", typeIn, null, "asset_type"), row("File format", formatIn, "Checked when it arrives: a safetensors header, an image's or sound's signature, JSON lines.", "file_format"),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Upload"), progress, general));
  listPage(main, "Assets", "Files, weights and LoRAs, uploaded once and mounted read-only into the replicas of every endpoint that names them (at $OCTOAI_VOLUME_PATH/assets/<name>).",
    h("div", {}, problem, h("table", { class: "list", id: "assets" }, h("thead", {}, h("tr", {}, ["Name", "Type", "Status", "Size", "Created", "Id", ""].map((t) => h("th", {}, t)))), body)), form);
  await refresh();
}

// The engines with a trainer on Berth (api/tuning.py), what each trains on, its defaults.
const TRAINERS = {
  "text/all-minilm-l6-v2": {
    label: "Embeddings adapter (all-MiniLM-L6-v2, CPU)", checkpoint: "all-minilm-l6-v2", formats: ["jsonl"], steps: 300,
    files: "JSON lines of labelled pairs, {\"a\", \"b\", \"label\": 1 | 0}: file assets, uploaded on the Assets page.",
  },
  "image/stable-diffusion-xl-v1-0": {
    label: "Stable Diffusion XL LoRA (GPU; base weights from the operator)", checkpoint: "octoai:default-sdxl", formats: ["png", "jpg", "jpeg"], steps: 500,
    files: "PNG or JPEG pictures (file assets), captioned with the trigger words.",
  },
};

async function tunesPage(main, signal) {
  const body = h("tbody");
  const problem = h("div", { class: "error", role: "alert" });
  const filesIn = h("select", { name: "files", multiple: true, size: 4, required: true });
  const engineIn = h("select", { name: "engine" }, Object.entries(TRAINERS).map(([k, t]) => h("option", { value: k }, t.label)));
  const filesHelp = h("small", { class: "muted" });
  let files = [];
  const showFiles = () => {
    const trainer = TRAINERS[engineIn.value];
    const chosen = new Set([...filesIn.selectedOptions].map((o) => o.value));
    filesHelp.textContent = trainer.files;
    fill(filesIn, files.filter((f) => f.status === "ready" && trainer.formats.includes(String(f.data?.file_format || "").toLowerCase()))
      .map((f) => h("option", { value: f.id, selected: chosen.has(f.id) }, f.name)));
  };
  const refresh = async () => {
    const [{ data: tunes }, { data: found }] = await Promise.all([
      api("/v1/tunes?limit=100", { signal }),
      api("/v1/assets?asset_type=file&limit=100", { signal }),
    ]);
    files = found;
    showFiles();
    fill(body, tunes.length ? tunes.map((t) => h("tr", { dataset: { tune: t.name } },
      h("td", {}, t.name), h("td", {}, badge(t.status)), h("td", {}, t.status_details || ""),
      h("td", {}, t.metrics?.loss_after != null ? `${t.metrics.loss_before.toFixed(4)} → ${t.metrics.loss_after.toFixed(4)}` : ""),
      h("td", {}, t.output_lora_ids.map((id) => h("code", {}, id))),
      h("td", {}, ["pending", "running"].includes(t.status)
        ? h("button", { type: "button", class: "small danger", onclick: async () => { try { await api(`/v1/tune/${t.id}/cancel`, { method: "POST" }); refresh(); } catch (e) { problem.textContent = e.message; } } }, "Cancel")
        : h("button", { type: "button", class: "small", onclick: async () => { try { await api(`/v1/tune/${t.id}`, { method: "DELETE" }); refresh(); } catch (e) { problem.textContent = e.message; } } }, "Delete")))) : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No tunes yet.")));
  };
  const nameIn = h("input", { type: "text", name: "name", required: true });
  const stepsIn = h("input", { type: "number", name: "steps", min: 1, max: 20000, value: 300 });
  const wordsIn = h("input", { type: "text", name: "trigger_words", placeholder: "berthy" });
  engineIn.addEventListener("change", () => { stepsIn.value = String(TRAINERS[engineIn.value].steps); showFiles(); });
  const general = h("div", { class: "error", role: "alert" });
  const form = h("form", { class: "card", onsubmit: async (e) => {
    e.preventDefault();
    general.textContent = "";
    const engine = engineIn.value;
    const words = wordsIn.value.split(",").map((w) => w.trim()).filter(Boolean);
    const details = {
      tune_type: "lora_tune",
      base_checkpoint: { checkpoint_id: TRAINERS[engine].checkpoint, engine },
      files: [...filesIn.selectedOptions].map((o) => ({ file_id: o.value })),
      steps: Number(stepsIn.value),
      trigger_words: words,
    };
    try {
      await api("/v1/tune", { method: "POST", body: { name: nameIn.value.trim(), details } });
      form.reset();
      stepsIn.value = String(TRAINERS[engineIn.value].steps);
      refresh();
    } catch (err) {
      general.textContent = err.message;
    }
  } },
    h("h3", {}, "New tune"),
    row("Name", nameIn), row("Trains", engineIn), row("Training files", filesIn), filesHelp,
    row("Trigger words", wordsIn, "Comma-separated; a picture's caption, and what a prompt names to call the LoRA up."),
    row("Steps", stepsIn), h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Start tuning"), general));
  listPage(main, "Fine-tuning", "Each tune runs as one job of a trainer endpoint of its own; its output is a LoRA asset that an endpoint mounts.",
    h("div", {}, problem, h("table", { class: "list", id: "tunes" }, h("thead", {}, h("tr", {}, ["Name", "Status", "", "Loss", "Output", ""].map((t) => h("th", {}, t)))), body)), form);
  while (!signal.aborted) {
    await refresh();
    await new Promise((r) => setTimeout(r, 2000));
  }
}

// -- tokens, secrets, registry credentials -----------------------------------------------

function listPage(main, title, hint, table, form) {
  fill(main, h("h1", {}, title), h("p", { class: "hint" }, hint), table, form);
}

async function tokensPage(main, signal) {
  const body = h("tbody");
  const once = h("div", { class: "once", hidden: true });
  const refresh = async () => {
    const tokens = await api("/v1/tokens", { signal });
    fill(body, tokens.map((t) => h("tr", { dataset: { token: t.name } },
      h("td", {}, t.name), h("td", {}, t.scopes.join(", ")), h("td", {}, t.endpoints ? t.endpoints.join(", ") : "all"),
      h("td", {}, ago(t.created_at)), h("td", {}, t.expires_at ? new Date(t.expires_at * 1000).toLocaleString() : "never"),
      h("td", {}, h("button", { type: "button", class: "small danger", onclick: async () => {
        if (!confirm(`Delete token ${t.name}? Whoever uses it is refused from now on.`)) return;
        try { await api(`/v1/tokens/${t.id}`, { method: "DELETE" }); refresh(); } catch (e) { once.hidden = false; fill(once, errorBox(e)); }
      } }, "Delete")))));
  };
  const nameIn = h("input", { name: "name", type: "text", required: true, maxlength: 100 });
  const scopes = ["inference", "admin", "agent"].map((s, i) => h("label", { class: "check" }, h("input", { type: "checkbox", name: "scopes", value: s, checked: i === 0 }), ` ${s}`));
  const endpointsIn = h("input", { name: "endpoints", type: "text", placeholder: "all endpoints" });
  const days = h("input", { name: "expires_in", type: "number", min: 1, placeholder: "never" });
  const general = h("div", { class: "error", role: "alert" });
  const form = h("form", { class: "card", onsubmit: async (e) => {
    e.preventDefault();
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
    const payload = { name: nameIn.value.trim(), scopes: scopes.map((l) => l.firstChild).filter((c) => c.checked).map((c) => c.value) };
    const names = endpointsIn.value.split(/[\s,]+/).filter(Boolean);
    if (names.length) payload.endpoints = names;
    if (days.value) payload.expires_in = Math.round(Number(days.value) * 86400);
    try {
      const made = await api("/v1/tokens", { method: "POST", body: payload });
      const b = h("button", { type: "button", class: "small" }, "Copy");
      b.addEventListener("click", () => copy(made.token, b));
      once.hidden = false;
      fill(once, h("p", {}, h("b", {}, `Token ${made.name}: `), "copy it now, it is not shown again."), h("code", { class: "secret", id: "new-token" }, made.token), " ", b);
      form.reset();
      refresh();
    } catch (err) {
      const fields = err instanceof ApiError ? err.fields() : {};
      for (const [k, msg] of Object.entries(fields)) { const box = form.querySelector(`[data-field="${CSS.escape(k)}"] .field-error`); if (box) box.textContent = msg; }
      general.textContent = err.message;
    }
  } },
    h("h3", {}, "New token"), row("Name", nameIn),
    h("div", { class: "field", dataset: { field: "scopes" } }, h("span", { class: "label" }, "Scopes"), h("div", { class: "checks" }, scopes), h("div", { class: "field-error" })),
    row("Endpoints (inference tokens)", endpointsIn, "Names separated by commas; empty: every endpoint."),
    row("Expires after (days)", days),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Create token"), general));
  listPage(main, "Tokens", "A token's secret is shown once, when it is made; Berth keeps only its hash.",
    h("div", {}, once, h("table", { class: "list", id: "tokens" }, h("thead", {}, h("tr", {}, ["Name", "Scopes", "Endpoints", "Created", "Expires", ""].map((t) => h("th", {}, t)))), body)), form);
  await refresh();
}

function keyedPage(main, signal, { title, hint, list, path, item, columns, fields }) {
  const body = h("tbody");
  const problem = h("div", { class: "error", role: "alert" });
  const refresh = async () => {
    const items = await api(list, { signal });
    fill(body, items.map((it) => {
      const key = typeof it === "string" ? it : it.key;
      return h("tr", { dataset: { key } }, h("td", {}, h("code", {}, key)), columns.map((c) => h("td", {}, c(it))),
        h("td", {}, h("button", { type: "button", class: "small danger", onclick: async () => {
          if (!confirm(`Delete ${key}?`)) return;
          try { await api(`${item}/${encodeURIComponent(key)}`, { method: "DELETE" }); refresh(); } catch (e) { problem.textContent = e.message; }
        } }, "Delete")));
    }));
  };
  const inputs = fields.map(([name, label, type]) => h("input", { name, type, required: true, autocomplete: type === "password" ? "new-password" : "off" }));
  const general = h("div", { class: "error", role: "alert" });
  const form = h("form", { class: "card", onsubmit: async (e) => {
    e.preventDefault();
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
    const payload = Object.fromEntries(inputs.map((i) => [i.name, i.value]));
    try {
      await api(path, { method: "POST", body: payload });
      form.reset();
      general.textContent = "";
      refresh();
    } catch (err) {
      const placed = err instanceof ApiError ? err.fields() : {};
      for (const [k, msg] of Object.entries(placed)) { const box = form.querySelector(`[data-field="${CSS.escape(k)}"] .field-error`); if (box) box.textContent = msg; }
      general.textContent = err.message;
    }
  } }, h("h3", {}, "Add"), inputs.map((i, n) => row(fields[n][1], i, fields[n][3])), h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Save"), general));
  listPage(main, title, hint, h("div", {}, problem, h("table", { class: "list", id: "items" }, h("thead", {}, h("tr", {}, ["Key", ...columns.map((c) => c.title), ""].map((t) => h("th", {}, t || "")))), body)), form);
  return refresh();
}

function secretsPage(main, signal) {
  return keyedPage(main, signal, {
    title: "Secrets",
    hint: "Each secret reaches the replicas of the endpoints that name it as an environment variable. Values are write-only: they are never shown again.",
    list: "/v1/secrets", path: "/v1/secret", item: "/v1/secret", columns: [],
    fields: [["key", "Name (an environment variable)", "text"], ["value", "Value", "password", "Saving an existing name replaces its value."]],
  });
}

function credentialsPage(main, signal) {
  const user = (c) => c.username;
  user.title = "Username";
  const updated = (c) => ago(c.updated_at);
  updated.title = "Updated";
  return keyedPage(main, signal, {
    title: "Registry credentials",
    hint: "For endpoints whose image is in a private registry. Passwords are write-only.",
    list: "/v1/registry-credentials", path: "/v1/registry-credential", item: "/v1/registry-credential", columns: [user, updated],
    fields: [["key", "Name", "text"], ["username", "Username", "text"], ["password", "Password or access token", "password"]],
  });
}

// -- the public demo page ----------------------------------------------------------------

function demoPage() {
  const name = document.body.dataset.endpoint;
  const box = h("div");
  fill(app, h("header", { class: "top" }, h("span", { class: "brand" }, "Berth"), h("span", { class: "muted" }, "demo")),
    h("main", { id: "main" }, h("h1", {}, name), h("p", { class: "hint" }, "Try this model: fill in the inputs and run it. No sign-in needed."), box));
  playground(box, { endpoint: name, demo: true, signal: new AbortController().signal });
}

if (mode === "demo") demoPage();
else {
  window.addEventListener("popstate", render);
  render();
}
