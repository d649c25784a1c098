// A form made from a JSON Schema (a model's input): one field per property, with its
// bounds, default and description; media fields take a file and send it as base64.
import { h } from "./dom.js";
import { decodeBase64, mediaElement, mediaType } from "./render.js";

export class FieldError extends Error {}

function resolve(schema, root) {
  let s = schema || {};
  for (let i = 0; i < 8 && s.$ref; i++) {
    const path = s.$ref.replace(/^#\//, "").split("/");
    let found = root;
    for (const part of path) found = found?.[part];
    s = { ...found, ...Object.fromEntries(Object.entries(s).filter(([k]) => k !== "$ref")) };
  }
  return s;
}

// anyOf [X, null] is an optional X.
function unwrap(schema, root) {
  const s = resolve(schema, root);
  const options = s.anyOf || s.oneOf;
  if (options) {
    const real = options.filter((o) => resolve(o, root).type !== "null");
    if (real.length === 1) return { ...resolve(real[0], root), ...pick(s), nullable: true };
  }
  return s;
}

function pick(s) {
  const out = {};
  for (const k of ["title", "description", "default", "examples"]) if (k in s) out[k] = s[k];
  return out;
}

function isMedia(s, root) {
  const data = s.type === "object" || s.properties ? resolve(s.properties?.data, root) : null;
  if (!data) return false;
  const options = data.anyOf || [data];
  return options.some((o) => resolve(o, root).type === "string");
}

function accept(name) {
  if (/image|photo|picture|img/i.test(name)) return "image/*";
  if (/audio|sound|speech|voice|wav/i.test(name)) return "audio/*";
  return "";
}

function base64Of(bytes) {
  let out = "";
  for (let i = 0; i < bytes.length; i += 0x8000) out += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(out);
}

function mediaField(name, s, required, initial) {
  let value = null;
  const preview = h("div", { class: "preview" });
  const show = (bytes, label) => {
    const type = mediaType(bytes);
    preview.replaceChildren(type ? mediaElement(bytes, type, name) : h("span", { class: "muted" }, label));
  };
  if (initial && typeof initial.data === "string") {
    value = initial;
    const bytes = decodeBase64(initial.data);
    if (bytes) show(bytes, "the example's file");
  }
  const input = h("input", {
    type: "file",
    name,
    accept: accept(name),
    onchange: async () => {
      const file = input.files[0];
      if (!file) return;
      const bytes = new Uint8Array(await file.arrayBuffer());
      value = { data: base64Of(bytes) };
      show(bytes, `${file.name}, ${bytes.length} bytes`);
    },
  });
  return {
    control: h("div", {}, input, preview),
    read() {
      if (value) return value;
      if (required) throw new FieldError("choose a file");
      return undefined;
    },
  };
}

function textual(name, s, initial) {
  const long = (s.maxLength || 1000) > 200 || /text|prompt|content|description|query/i.test(name);
  const attrs = { name, minlength: s.minLength, maxlength: s.maxLength, placeholder: s.examples?.[0] ?? "" };
  const el = long ? h("textarea", { ...attrs, rows: 3 }) : h("input", { ...attrs, type: "text" });
  el.value = initial ?? "";
  return el;
}

export function field(name, schema, root, required, initial) {
  const s = unwrap(schema, root);
  const start = initial !== undefined ? initial : s.default;
  let control;
  let read;
  if (isMedia(s, root)) {
    return { name, schema: s, required, ...mediaField(name, s, required, start) };
  }
  if (s.enum) {
    control = h("select", { name }, required ? null : h("option", { value: "" }, "—"), s.enum.map((v) => h("option", { value: String(v) }, String(v))));
    if (start !== undefined) control.value = String(start);
    read = () => {
      const v = control.value;
      if (v === "") return undefined;
      return s.enum.find((e) => String(e) === v);
    };
  } else if (s.type === "boolean") {
    control = h("input", { type: "checkbox", name, checked: !!start });
    read = () => control.checked;
  } else if (s.type === "integer" || s.type === "number") {
    control = h("input", {
      type: "number",
      name,
      min: s.minimum ?? s.exclusiveMinimum,
      max: s.maximum ?? s.exclusiveMaximum,
      step: s.type === "integer" ? 1 : "any",
      value: start ?? "",
    });
    read = () => {
      if (control.value === "") return undefined;
      const v = Number(control.value);
      if (!Number.isFinite(v) || (s.type === "integer" && !Number.isInteger(v))) throw new FieldError(`must be ${s.type === "integer" ? "a whole number" : "a number"}`);
      if (s.minimum != null && v < s.minimum) throw new FieldError(`must be at least ${s.minimum}`);
      if (s.maximum != null && v > s.maximum) throw new FieldError(`must be at most ${s.maximum}`);
      return v;
    };
  } else if (s.type === "string") {
    control = textual(name, s, start);
    read = () => {
      const v = control.value;
      if (v === "") return undefined;
      if (s.minLength && v.length < s.minLength) throw new FieldError(`at least ${s.minLength} characters`);
      return v;
    };
  } else if (s.type === "array" && ["string", "number", "integer"].includes(unwrap(s.items, root).type)) {
    const itemType = unwrap(s.items, root).type;
    const strings = itemType === "string";
    control = h("textarea", { name, rows: 4, placeholder: strings ? "one per line" : "numbers, separated by commas" });
    if (Array.isArray(start)) control.value = start.join(strings ? "\n" : ", ");
    read = () => {
      const raw = control.value;
      if (raw.trim() === "") return undefined;
      if (strings) return raw.split("\n").filter((line) => line !== "");
      const out = raw.split(/[\s,]+/).filter(Boolean).map(Number);
      if (out.some((v) => !Number.isFinite(v))) throw new FieldError("numbers only");
      return out;
    };
  } else {
    control = h("textarea", { name, rows: 4, class: "json", placeholder: "JSON" });
    if (start !== undefined) control.value = JSON.stringify(start, null, 2);
    read = () => {
      if (control.value.trim() === "") return undefined;
      try {
        return JSON.parse(control.value);
      } catch (err) {
        throw new FieldError(`not JSON: ${err.message}`);
      }
    };
  }
  return { name, schema: s, required, control, read };
}

// The whole form: fields, their labels and hints, and errors next to each.
export function schemaForm(schema, root, initial = {}) {
  const s = resolve(schema, root);
  const required = new Set(s.required || []);
  const fields = Object.entries(s.properties || {}).map(([name, prop]) =>
    field(name, prop, root, required.has(name), initial[name]),
  );
  const rows = fields.map((f) => {
    const bounds = [];
    if (f.schema.minimum != null) bounds.push(`≥ ${f.schema.minimum}`);
    if (f.schema.maximum != null) bounds.push(`≤ ${f.schema.maximum}`);
    f.error = h("div", { class: "field-error", role: "alert" });
    return h(
      "label",
      { class: "field", dataset: { field: f.name } },
      h("span", { class: "label" }, f.schema.title || f.name, f.required ? h("b", { class: "req", title: "required" }, " *") : null, bounds.length ? h("small", {}, " ", bounds.join(", ")) : null),
      f.control,
      f.schema.description ? h("small", { class: "hint" }, f.schema.description) : null,
      f.error,
    );
  });
  return {
    element: h("div", { class: "schema-form" }, rows.length ? rows : h("p", { class: "muted" }, "This route takes no input.")),
    read() {
      const out = {};
      let failed = false;
      for (const f of fields) {
        f.error.textContent = "";
        try {
          const v = f.read();
          if (v === undefined && f.required) throw new FieldError("required");
          if (v !== undefined) out[f.name] = v;
        } catch (err) {
          if (!(err instanceof FieldError)) throw err;
          f.error.textContent = err.message;
          failed = true;
        }
      }
      if (failed) throw new FieldError("some inputs need fixing");
      return out;
    },
    showErrors(details) {
      for (const d of details || []) {
        const loc = (d.loc || []).filter((p) => p !== "body");
        const f = fields.find((x) => x.name === loc[0]);
        if (f) f.error.textContent = d.msg;
      }
    },
  };
}
